"""Where the experiments write their figures (imported by the scripts beside it)."""

from __future__ import annotations

from pathlib import Path

from orderopt.files import atomic_write, write_json


def save_results(result: dict, text: str, out: str | Path, stem: str) -> None:
    """``out/stem.json`` (the figures) and ``out/stem.md`` (their table), each written
    atomically (the folder is made if need be)."""
    write_json(result, Path(out) / f"{stem}.json")
    atomic_write(Path(out) / f"{stem}.md", lambda tmp: tmp.write_text(text))
