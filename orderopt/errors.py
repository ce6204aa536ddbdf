"""User-facing errors and the command-line wrapper that turns them into one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (file, option, order): reported as one line, exit code 2."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``main``; a ``ValueError`` (``UserError`` included) or a missing
    file becomes ``error: <message>`` on stderr and exit code 2, never a traceback."""
    try:
        return int(main(argv) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        return 130


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a one-line error (and exit code 2) instead of usage plus error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` unless the help already says what the default is, or there is
    no default value to show (flags, optional paths)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)
