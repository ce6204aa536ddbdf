import json
import subprocess
import sys

import pytest

from orderopt import figures, report, search
from orderopt.results import Run
from tests.test_search import setup  # noqa: F401  (fixture)


def run(*args):
    return subprocess.run([sys.executable, "-m", "orderopt.report", *args], capture_output=True, text=True)


def test_report_of_two_runs(setup, tmp_path):  # noqa: F811
    tmp, common, proxies = setup
    a, b = tmp / "p2", tmp / "p3"
    assert search.main(["--patch", "2", *common, "--proxy", str(proxies[2]), "--out", str(a)]) == 0
    assert (
        search.main(
            [
                "--patch",
                "3",
                "--strategy",
                "greedy",
                *common,
                "--proxy",
                str(proxies[3]),
                "--out",
                str(b),
                "--random",
                "12",
            ]
        )
        == 0
    )
    assert report.main([str(a), str(b)]) == 0
    md = (a / "report.md").read_text()
    for fig in ("gains.png", "orders.png", "tradeoff.png", "stages.png", "random.png"):
        assert (a / fig).stat().st_size > 5000 and f"({fig})" in md
    assert "0,1;2,3" in md and "checkerboard" in md and "p3 (3×3" in md
    # the 2×2 run has the whole cost table, so its frontier is reported; the greedy 3×3 run has not
    assert md.count("Best schedule within T stages") == 1 and "| 1 | `0,0;0,0` |" in md and "| 4 | `" in md

    # rate against decoding time, from a file in the schema of experiments/bench_decode.py
    model_hash = json.loads((a / "manifest.json").read_text())["model_hash"]
    names = ["hyperprior", "checkerboard", "paper 2x2", "paper 4x4", "autoregressive"]
    timing = {"model_hash": model_hash, "device": "cpu", "median_over_images": {}}
    for i, name in enumerate(names):
        timing["median_over_images"][name] = {"latent_s": 0.01 * (i + 1)}
    (tmp_path / "t.json").write_text(json.dumps(timing))
    (tmp_path / "gpu.json").write_text(json.dumps({**timing, "device": "a GPU"}))
    timed = [str(tmp_path / "t.json"), str(tmp_path / "gpu.json")]  # one panel each
    assert report.main([str(a), str(b), "--decode-time", *timed, "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "decode_time.png").stat().st_size > 5000
    text = (tmp_path / "r" / "report.md").read_text()
    assert "(decode_time.png)" in text and f"--decode-time {' '.join(timed)}" in text
    labels = [
        p[2]
        for p in figures.decode_time_points(
            [Run(a), Run(b)], figures.load_decode_time(tmp_path / "t.json", [Run(a)])
        )
    ]
    # unverified runs: candidates are drawn at their proxy rates, and say so
    assert {"hyperprior", "checkerboard", "paper 2×2 (proxy rate)", "best 2×2 (proxy rate)"} <= set(labels)
    assert not any(x.startswith("paper 4×4") for x in labels)  # no 4x4 run: no 4x4 point
    # a run held out on other images is not drawn against the first run's images
    other = tmp_path / "other"
    other.mkdir()
    man = json.loads((a / "manifest.json").read_text())
    man["arguments"] = {**man["arguments"], "images": None, "latents": "some/elsewhere.pt"}
    (other / "manifest.json").write_text(json.dumps(man))
    (other / "candidates.csv").write_text((a / "candidates.csv").read_text())
    assert Run(other).held_out == "elsewhere" and "held out: elsewhere" in Run(other).label
    timed = figures.load_decode_time(tmp_path / "t.json", [Run(a)])
    assert figures.decode_time_points([Run(a), Run(other)], timed) == figures.decode_time_points(
        [Run(a)], timed
    )
    timing["model_hash"] = "other"
    (tmp_path / "t.json").write_text(json.dumps(timing))
    r = run(str(a), "--decode-time", str(tmp_path / "t.json"))
    assert r.returncode == 2 and "time the same model" in r.stderr
    r = run(str(a), "--decode-time", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_report_errors(tmp_path):
    r = run(str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stderr.count("\n") == 1
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "candidates.csv").write_text("order\n")
    r = run(str(partial))
    assert r.returncode == 2 and "not a finished orderopt search run" in r.stderr
    (partial / "manifest.json").write_text(json.dumps({"status": "running"}))
    r = run(str(partial))
    assert r.returncode == 2 and "did not finish" in r.stderr
    (partial / "manifest.json").write_text(json.dumps({"status": "complete"}))
    r = run(str(partial))
    assert r.returncode == 2 and "not an orderopt search run" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "orderopt.report"], capture_output=True, text=True, cwd=empty)
    assert r.returncode == 2 and "no search runs" in r.stderr


@pytest.mark.parametrize("bad", ["{", "[]"])
def test_damaged_manifest(tmp_path, bad):
    d = tmp_path / "r"
    d.mkdir()
    (d / "manifest.json").write_text(bad)
    (d / "candidates.csv").write_text("x\n")
    r = run(str(d))
    assert r.returncode == 2 and "Traceback" not in r.stderr
