"""User-facing errors and the command-line wrapper that turns them into one line and exit 2."""

from __future__ import annotations

import argparse
import math
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


def number(
    kind: type = int,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    multiple_of: int | None = None,
) -> Callable[[str], int | float]:
    """An argparse ``type`` for a number in range: a bad value is a one-line error naming the
    option (``argument --crop: must be a multiple of 64, got 100``) before any work starts."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not math.isfinite(value):  # inf and nan train to non-finite weights
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least}, got {text}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be more than {above}, got {text}")
        if below is not None and not value < below:
            raise argparse.ArgumentTypeError(f"must be less than {below}, got {text}")
        if multiple_of is not None and value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple_of}, got {text}")
        return value

    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: …)`` unless the help already says what the default is, or there is
    no default value to show (flags, optional paths)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)
