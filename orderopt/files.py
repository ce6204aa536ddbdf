"""File I/O at the edges: atomic writes and versioned torch files with one-line errors."""

from __future__ import annotations

import json
import os
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def save_torch(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_bytes(data: bytes, path: str | Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_png(pixels: np.ndarray, path: str | Path) -> None:
    """An (H, W, 3) uint8 image as PNG, whatever the file's name ends with."""
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def write_json(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def load_versioned(path: str | Path, fmt: str, version: int, what: str, missing_hint: str = "") -> dict:
    """Load a ``torch.save``d dict written with ``{"format": fmt, "version": version}``.

    Missing, unreadable, foreign and other-version files are ``UserError``s naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist{'; ' + missing_hint if missing_hint else ''}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise UserError(f"{what} {path} cannot be read ({type(err).__name__}); is it truncated?") from None
    if not isinstance(d, dict) or d.get("format") != fmt:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise UserError(f"{path} is not an orderopt {what} (format {found!r}, expected {fmt!r})")
    if d.get("version") != version:
        raise UserError(
            f"{what} {path} has version {d.get('version')}, this orderopt reads version {version}"
        )
    return d
