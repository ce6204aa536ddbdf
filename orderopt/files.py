"""File I/O at the edges: atomic writes and versioned torch files with one-line errors."""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import UserError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` and rename the temporary file onto ``path``: an interrupted write
    never leaves a broken file behind."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"output {path} lies under a file, not a folder; choose another path") from None
    except PermissionError:
        msg = f"cannot create the folder of {path} (permission denied); choose another path"
        raise UserError(msg) from None
    # unique per process and call: parallel workers writing one file never share a temp file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except PermissionError:
        raise UserError(f"cannot write {path} (permission denied); choose another path") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output that cannot be written: a folder, a path under a
    file, or a folder without write permission (the folder itself is created by the write)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"output {path} lies under a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path} (permission denied in {parent}); choose another path")


def save_torch(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_bytes(data: bytes, path: str | Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_png(pixels: np.ndarray, path: str | Path) -> None:
    """An (H, W, 3) uint8 image as PNG, whatever the file's name ends with."""
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def write_json(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def load_versioned(
    path: str | Path,
    fmt: str,
    version: int,
    what: str,
    missing_hint: str = "",
    required: tuple[str, ...] = (),
) -> dict:
    """Load a ``torch.save``d dict written with ``{"format": fmt, "version": version}``.

    Missing, unreadable, foreign and other-version files are ``UserError``s naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist{'; ' + missing_hint if missing_hint else ''}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols on stderr
            warnings.simplefilter("ignore")
            # weights_only: a pickle that would run code (or build any object but tensors and
            # plain containers) is refused, never executed
            d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise UserError(
            f"{what} {path} cannot be read ({type(err).__name__}): truncated, or not a weights file"
        ) from None
    if not isinstance(d, dict) or d.get("format") != fmt:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise UserError(f"{path} is not an orderopt {what} (format {found!r}, expected {fmt!r})")
    if d.get("version") != version:
        raise UserError(
            f"{what} {path} has version {d.get('version')}, this orderopt reads version {version}"
        )
    missing = [k for k in required if k not in d]
    if missing:
        raise UserError(f"{what} {path} is incomplete: it lacks {', '.join(missing)}")
    return d
