"""Writes results/README.md: every file under results/ with the command that made it and the
commit that last changed it, the headline report first.

The command comes from the file itself: a markdown file's ``Regenerate: `…` `` line, a JSON
file's ``command`` key, a search run's ``manifest.json``, or the ``.md`` beside a ``.json``.
Search runs written before the one-basis schema are marked as such.

    python experiments/results_index.py [--results results]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

from orderopt.files import atomic_write
from orderopt.model import QUALITIES, read_checkpoint, shipped_weights

ROOT = Path("results")  # the default --results
HEADLINE = ["report/report.md", "report/tradeoff.png", "report/gains.png"]


def command_of(path: Path) -> str:
    """The command recorded in or beside ``path`` ('' when none is)."""
    candidates = [path]
    if path.suffix in (".json", ".png", ".csv", ".npz"):
        candidates += [path.with_suffix(".md"), path.parent / "manifest.json", path.parent / "report.md"]
    for c in candidates:
        if not c.is_file():
            continue
        text = c.read_text(errors="replace") if c.suffix in (".md", ".json", ".txt") else ""
        m = re.search(r"Regenerate:\s*`([^`]+)`", text) or re.search(r"command: (.+)", text)
        if m:
            return m.group(1).strip()
        if c.suffix == ".json":
            try:
                d = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict) and isinstance(d.get("command"), str):
                return d["command"]
    return ""


def last_commit(path: Path) -> str:
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h %ad", "--date=short", "--", str(path)],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "uncommitted"


def legacy(path: Path) -> bool:
    csv = path / "candidates.csv"
    return csv.is_file() and "gain_basis" in csv.read_text().splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT,
        help=f"folder to index, written to its README.md (default {ROOT})",
    )
    root = parser.parse_args().results
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "README.md")
    runs = sorted({p.parent for p in files if p.name == "manifest.json"})
    lines = [
        "# Results",
        "",
        "Every file here comes from a command in this repository; this index (regenerate it with "
        "`python experiments/results_index.py`) names each file's command and the commit that last "
        "changed it. Machine: the 2-core x86_64 CPU unless a file says otherwise (GPU files: `gpu/`, "
        "`*_cuda*`).",
        "",
        "## Headline",
        "",
    ]
    for h in HEADLINE:
        p = root / h
        if p.is_file():
            lines.append(f"- [`{h}`]({h}) — `{command_of(p) or 'see report.md'}` ({last_commit(p)})")
    lines += ["", "## Search runs", "", "| run | command | last commit |", "|---|---|---|"]
    shipped = {q: read_checkpoint(shipped_weights("base", q))["hash"] for q in QUALITIES}
    for r in runs:
        note = " (older schema: mixed bases, no intervals; rerun the command)" if legacy(r) else ""
        model = json.loads((r / "manifest.json").read_text()).get("model_hash", "")
        quality = next((q for q, h in shipped.items() if h == model), None)
        note += f" (quality {quality})" if quality else f" (previous model `{model[:8]}`)"
        cmd = command_of(r / "manifest.json")
        lines.append(
            f"| [`{r.relative_to(root)}/`]({r.relative_to(root)}/){note} | `{cmd}` | {last_commit(r)} |"
        )
    lines += ["", "## Other files", "", "| file | command | last commit |", "|---|---|---|"]
    for p in files:
        if any(r in p.parents for r in runs) or str(p.relative_to(root)) in HEADLINE:
            continue
        rel = p.relative_to(root)
        cmd = command_of(p)
        lines.append(f"| [`{rel}`]({rel}) | {f'`{cmd}`' if cmd else '–'} | {last_commit(p)} |")
    text = "\n".join(lines) + "\n"
    atomic_write(root / "README.md", lambda tmp: tmp.write_text(text))
    print(f"indexed {len(files)} files in {root / 'README.md'}")


if __name__ == "__main__":
    main()
