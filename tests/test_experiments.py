"""Known-answer tests of the measurement helpers of experiments/ (BD-rate, ΔPSNR at equal bpp,
the cost-table benchmark's row-level table), and a smoke test per experiment script: its real
main path on tiny inputs (the tiny model, a few small images, a step or two), writing into the
test's folder, with checks on what it writes."""

import importlib
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
RESULTS = EXPERIMENTS.parent / "results"
sys.path.insert(0, str(EXPERIMENTS))

import base_vs_classic as bvc  # noqa: E402
import bd_rate_contexts as bdc  # noqa: E402


def test_bd_rate_of_a_uniformly_cheaper_curve():
    """A codec that needs 10% fewer bits at every PSNR has a BD-rate of exactly −10%."""
    anchor = [(0.1 * 1.5**i, 26 + 1.2 * i) for i in range(8)]
    test = [(0.9 * r, d) for r, d in anchor[2:5]]  # three points, as our three qualities
    assert bvc.bd_rate(anchor, test) == pytest.approx(-10.0, abs=1e-6)
    assert bdc.bd_rate(
        [r for r, _ in test], [d for _, d in test], [r / 0.9 for r, _ in test]
    ) == pytest.approx(-10.0, abs=1e-6)


def test_bd_rate_needs_overlap():
    anchor = [(0.1 * 1.5**i, 20 + i) for i in range(8)]
    assert bvc.bd_rate(anchor, [(1.0, 40.0), (2.0, 42.0)]) is None  # no common PSNR range


def test_psnr_at_equal_bpp_interpolates_in_log_rate():
    curve = [(0.1, 25.0), (0.4, 31.0)]
    assert bvc.psnr_at(curve, 0.2) == pytest.approx(28.0)  # halfway in log2: 0.1 → 0.2 → 0.4
    assert bvc.psnr_at(curve, 0.05) is None and bvc.psnr_at(curve, 0.5) is None


def test_bootstrap_interval_of_a_constant_is_a_point():
    lo, hi = bvc.bootstrap_ci([1.5] * 10)
    assert lo == hi == 1.5
    assert all(np.isnan(bvc.bootstrap_ci([1.0])))


def test_cost_table_bench_rows_sum_to_the_oracles_table(tmp_path):
    """bench_cost_table's row-level table (cached per position) sums to the oracle's costs,
    and its row sampling is stratified per image and weighted to the full count."""
    import bench_cost_table as bct
    import torch

    from orderopt.context import AnyOrderContext
    from orderopt.costs import ProxyOracle

    from .test_costs import CH, M, random_latents

    torch.manual_seed(0)
    lat = random_latents()
    oracle = ProxyOracle(AnyOrderContext(2, M, CH).eval(), lat)
    blocks = bct.row_level(oracle, tmp_path / "rows")
    again = bct.row_level(oracle, tmp_path / "rows")  # read back from the cache
    assert all(np.array_equal(a, b) for a, b in zip(blocks, again, strict=True))
    sizes = [bct.rows_per_image(lat, 2, q) for q in range(4)]
    assert sizes[0] == [16, 15, 20] and sizes[3] == [16, 12, 15]  # 8×8, 9×6, 7×10 latents
    table = bct.table_from_rows(blocks, sizes, 2)
    np.testing.assert_allclose(table, oracle.costs(range(16)), rtol=1e-6)
    idx, weight = bct.sample_rows([16, 15, 20], 0.5, seed=0)
    assert [int(((idx >= a) & (idx < b)).sum()) for a, b in ((0, 16), (16, 31), (31, 51))] == [8, 8, 10]
    assert weight[idx].sum() == pytest.approx(51)


SCRIPTS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.py")
    if p.stem not in ("outputs", "timing")  # helpers of the scripts
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_experiment_script_imports_and_explains_its_options(script, capsys, monkeypatch):
    """Each script still imports against the package (a renamed function breaks it here, not
    in the next regeneration of results/) and its --help names its options."""
    import runpy

    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--help" in out


# --- smoke tests: each script's main path on tiny inputs ------------------------------------------


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Latents the scripts extract are cached in the test's folder, not in ~/.cache."""
    monkeypatch.setenv("ORDEROPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def photo_dir(tmp_path):
    """Two embedded photographs downscaled to 192 pixels: real content, on which the classic
    codecs' rate–distortion curves rise (random textures do not compress, and smaller images
    put JPEG 2000's two lowest rates on its header size)."""
    from PIL import Image

    from orderopt import data

    root = tmp_path / "photos"
    root.mkdir()
    for name in ("astronaut", "coffee"):
        with Image.open(data.embedded_image_paths()[name]) as im:
            small = im.convert("RGB")
        small.thumbnail((192, 192))
        small.save(root / f"{name}.png")
    return root


def run_main(monkeypatch, script: str, *args) -> None:
    """experiments/SCRIPT.py's main() with these command-line arguments, in this process."""
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, args)])
    module.main()


def outputs(folder: Path, stem: str) -> tuple[dict, str]:
    """A script's STEM.json (parsed) and STEM.md."""
    return json.loads((folder / f"{stem}.json").read_text()), (folder / f"{stem}.md").read_text()


def md_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of ``text``, as rows of {header: cell}; checks that each has a
    separator line and rows as wide as its header."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip()[1:-1].split("|")])
            continue
        if block:
            head, sep, *rows = block
            assert all(c and set(c) <= set("-:") for c in sep), block
            assert all(len(r) == len(head) for r in rows), block
            tables.append([dict(zip(head, r, strict=True)) for r in rows])
            block = []
    return tables


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def gain_cell(cell: str) -> tuple[float, float, float]:
    """``-0.31% [-0.52, -0.10]`` → (-0.31, -0.52, -0.10)."""
    m = re.fullmatch(r"([-+]\d+\.\d+)% \[([-+]\d+\.\d+), ([-+]\d+\.\d+)\]", cell)
    assert m, cell
    return tuple(float(v) for v in m.groups())


def test_base_vs_classic_on_two_small_photographs(photo_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_main(monkeypatch, "base_vs_classic", "--set", f"small={photo_dir}", "--out", out)
    result, text = outputs(out, "base_vs_classic")
    assert (out / "base_vs_classic.png").stat().st_size > 0
    assert set(result) == {"command", "models", "sweeps", "sets"} and set(result["models"]) == {"1", "2", "3"}
    s = result["sets"]["small"]
    assert s["images"] == 2 and [r["name"] for r in s["per_image"]] == ["astronaut.png", "coffee.png"]
    for r in s["per_image"]:
        assert [p["quality"] for p in r["ours"]] == [1, 2, 3]
        assert all(0 < p["bpp"] < 4 and 15 < p["psnr"] < 50 for p in r["ours"])
        for codec, sweep in bvc.SWEEPS.items():
            pts = r["classic"][codec]
            assert [p["setting"] for p in pts] == sweep and all(finite(p["bpp"], p["psnr"]) for p in pts)
    ours = s["summary"]["ours_mean"]
    assert ours[0]["bpp"] < ours[1]["bpp"] < ours[2]["bpp"] and ours[0]["psnr"] < ours[2]["psnr"]
    for codec in bvc.SWEEPS:
        assert -100 < s["summary"]["bd_rate_pct"][codec] < 100
        for d in s["summary"]["delta_psnr"][codec]:
            assert d["mean_db"] is None or (-10 < d["mean_db"] < 10 and d["images"] <= 2)
    (table,) = md_tables(text)
    assert [row["quality"] for row in table] == ["q1", "q2", "q3"]
    assert float(table[1]["bpp"]) == pytest.approx(ours[1]["bpp"], abs=1e-3)
    assert "## small (2 images)" in text and "BD-rate of the three qualities" in text
    # --summarize recomputes the same summaries from the per-image points
    again = tmp_path / "again"
    run_main(monkeypatch, "base_vs_classic", "--summarize", out / "base_vs_classic.json", "--out", again)
    redone, _ = outputs(again, "base_vs_classic")
    assert json.dumps(redone["sets"], sort_keys=True) == json.dumps(result["sets"], sort_keys=True)


def test_bench_base_step_times_a_tiny_architecture(tmp_path, monkeypatch):
    args = ["--steps", "1", "--arch", "8,12", "--batch", "1", "--crop", "64", "--warmup", "0"]
    run_main(monkeypatch, "bench_base_step", *args, "--out", tmp_path)
    result, text = outputs(tmp_path, "bench_base_step")
    assert set(result) == {"device", "cpu_flags", "torch", "rows", "command"}
    assert [(r["N"], r["M"], r["precision"]) for r in result["rows"]] == [
        (8, 12, "float32"),
        (8, 12, "bfloat16"),
    ]
    assert all(finite(r["step_s"]) and 0 < r["step_s"] < 30 for r in result["rows"])
    assert result["command"] == "python experiments/bench_base_step.py " + " ".join(args)
    (table,) = md_tables(text)
    assert [row["precision"] for row in table] == ["float32", "bfloat16"]
    assert float(table[0]["s per step"]) == pytest.approx(result["rows"][0]["step_s"], abs=1e-3)
    assert "Batch 1 of 64×64 crops, median of 1 steps after 0 warm-up steps" in text


def test_pack_images_reencodes_and_downscales(image_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "packed"
    run_main(monkeypatch, "pack_images", "--out", out, "--max-side", "66", "--quality", "50", image_dir)
    from PIL import Image

    packed = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert packed == ["imgs/a.webp", "imgs/b.webp", "imgs/c.webp"]  # one folder per input folder
    sizes = {}
    for p in (out / "imgs").iterdir():
        with Image.open(p) as im:
            assert im.format == "WEBP" and im.mode == "RGB"
            sizes[p.stem] = im.size
    # a (96×80): shorter side 80 → 66; b (64×70) and c (130×64): shorter side 64, kept
    assert sizes == {"a": (79, 66), "b": (64, 70), "c": (130, 64)}
    total = sum(p.stat().st_size for p in (out / "imgs").iterdir())
    assert capsys.readouterr().out.strip() == f"{total / 2**20:.1f} MiB in {out}"


def test_one_basis_summary_of_the_committed_runs(tmp_path, monkeypatch):
    """Summarises finished runs (the committed ones, read only) into a file of our choosing."""
    from orderopt.results import Run

    runs = [RESULTS / "search-patch2", RESULTS / "search-patch4"]
    out = tmp_path / "summary.md"
    run_main(monkeypatch, "one_basis_summary", *runs, "--out", out)
    text = out.read_text()
    assert text.startswith("Regenerate: `python experiments/one_basis_summary.py ")
    (table,) = md_tables(text)
    for path in runs:
        run = Run(path)
        rows = [r for r in table if r["patch"] == f"{run.patch}×{run.patch}"]
        best = run.orders.iloc[0]
        assert rows[0]["row"].startswith(f"best `{best['order']}`") and rows[0]["stages"] == str(
            best["stages"]
        )
        assert [r["row"] for r in rows[-2:]] == ["autoregressive", "hyperprior"]
        assert len(rows) == 3 + (run.paper() != best["order"])
        assert rows[-2]["vs autoregressive [95% CI]"] == "+0.00% [+0.00, +0.00]"
        for r in rows:
            for cell in (r["vs checkerboard [95% CI]"], r["vs autoregressive [95% CI]"]):
                gain, lo, hi = gain_cell(cell)
                assert lo - 1e-9 <= gain <= hi + 1e-9 and abs(gain) < 50
        tied = int((~run.orders["distinguishable_from_best"].astype(bool)).sum())
        assert f"{run.patch}×{run.patch}: {tied} of {len(run.orders)} orders are not told apart" in text


def test_gpu_summary_of_the_committed_gpu_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "summary.md"
    run_main(monkeypatch, "gpu_summary", "--results", RESULTS, "--out", out)
    text = out.read_text()
    assert text == capsys.readouterr().out  # what it prints is what it writes
    decode_runs = sorted(p.parent.name for p in (RESULTS / "gpu").glob("run*/decode_time_cuda.json"))
    train_runs = sorted(p.parent.name for p in (RESULTS / "gpu").glob("run*/bench_train_cuda.json"))
    decode, train = md_tables(text)
    assert list(decode[0]) == ["ratio", *decode_runs, "range"] and decode[0]["ratio"] == "ŷ coder"
    assert list(train[0]) == ["model", *train_runs, "range"]
    for rows, names in ((decode[1:], decode_runs), (train, train_runs)):
        for row in rows:  # one figure per run ('–' where it lacks one), then their range
            vals = [float(row[r]) for r in names if row[r] != "–"]
            lo, hi = (float(v) for v in row["range"].split("–"))
            assert all(finite(v) and v > 0 for v in vals) and (lo, hi) == (min(vals), max(vals))
    assert any(r["ratio"].startswith("autoregressive / 4×4 on 768×512") for r in decode)
    last = text.splitlines()[-1]
    if (RESULTS / "search-patch4-dp-cuda" / "costs.npz").is_file():
        compared = last.startswith("4×4 cost table (2^16 × 16 entries)")
        assert (compared and ("(the same)" in last or "DIFFERENT" in last)) or last.startswith(
            "(the CPU and GPU 4×4 DP runs are of different models"  # the model was retrained since
        )
    # without GPU runs: each part says so, and the summary goes to RESULTS/gpu/summary.md
    empty = tmp_path / "results"
    run_main(monkeypatch, "gpu_summary", "--results", empty)
    text = (empty / "gpu" / "summary.md").read_text()
    for line in ("(no GPU decoding runs)", "(no GPU training runs)", "(no CPU/GPU pair of 4×4 DP runs)"):
        assert line in text.splitlines()


def test_results_index_of_a_small_results_folder(tmp_path, monkeypatch):
    from orderopt.model import read_checkpoint, shipped_weights

    root = tmp_path / "results"
    (root / "report").mkdir(parents=True)
    (root / "report" / "report.md").write_text("# Report\nRegenerate: `python -m orderopt.report r`.\n")
    (root / "bench.json").write_text(json.dumps({"command": "python experiments/bench.py"}))
    (root / "table.json").write_text("{}")
    (root / "table.md").write_text("Regenerate: `python experiments/table.py --out x`\n")
    (root / "notes.txt").write_text("no command here\n")
    q2 = read_checkpoint(shipped_weights("base", 2))["hash"]
    for name, model_hash, header in (
        ("search-a", q2, "rank,order"),
        ("search-old", "0123456789abcdef", "gain_basis"),
    ):
        (root / name).mkdir()
        manifest = {"model_hash": model_hash, "command": f"python -m orderopt.search --out {name}"}
        (root / name / "manifest.json").write_text(json.dumps(manifest))
        (root / name / "candidates.csv").write_text(header + "\n")
    (root / "README.md").write_text("stale\n")
    run_main(monkeypatch, "results_index", "--results", root)
    text = (root / "README.md").read_text()
    assert text.startswith("# Results\n")
    assert "- [`report/report.md`](report/report.md) — `python -m orderopt.report r` (uncommitted)" in text
    runs, others = md_tables(text)
    assert [r["run"] for r in runs] == [
        "[`search-a/`](search-a/) (quality 2)",
        "[`search-old/`](search-old/) (older schema: mixed bases, no intervals; rerun the command) "
        "(previous model `01234567`)",
    ]
    assert runs[0]["command"] == "`python -m orderopt.search --out search-a`"
    assert {r["file"]: r["command"] for r in others} == {
        "[`bench.json`](bench.json)": "`python experiments/bench.py`",
        "[`notes.txt`](notes.txt)": "–",
        "[`table.json`](table.json)": "`python experiments/table.py --out x`",
        "[`table.md`](table.md)": "`python experiments/table.py --out x`",
    }
    assert {r["last commit"] for r in runs + others} == {"uncommitted"}


@pytest.mark.parametrize("script", sorted(EXPERIMENTS.glob("*.sh")), ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_save_results_writes_both_files_into_a_new_folder(tmp_path):
    from outputs import save_results

    save_results({"a": 1.5, "b": [1, 2]}, "# T\n", tmp_path / "new" / "sub", "stem")
    assert json.loads((tmp_path / "new" / "sub" / "stem.json").read_text()) == {"a": 1.5, "b": [1, 2]}
    assert (tmp_path / "new" / "sub" / "stem.md").read_text() == "# T\n"
    assert sorted(p.name for p in (tmp_path / "new" / "sub").iterdir()) == ["stem.json", "stem.md"]


def test_median_seconds_warms_up_once_and_takes_the_median(monkeypatch):
    import timing

    clock = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # calls of 1, 3 and 2 s
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    calls = []
    assert timing.median_seconds(lambda: calls.append(1), repeat=3) == 2.0
    assert len(calls) == 4  # one warm-up call, untimed
    clock = iter([0.0, 5.0])
    assert timing.median_seconds(lambda: calls.append(1), repeat=1, warmup=False) == 5.0 and len(calls) == 5


def untrained_proxy(
    path: Path, patch: int, model_hash: str, m: int = 12, c: int = 24, mixture: int = 1
) -> Path:
    """An any-order proxy at its initialisation for the tiny model (ŷ channels m, h_s output c):
    rates of no meaning, which is all a smoke test needs, without a training."""
    import torch

    from orderopt.context import AnyOrderContext
    from orderopt.fit import save_context

    torch.manual_seed(0)
    proxy = AnyOrderContext(patch, m, c, mixture=mixture)
    meta = {**proxy.spec(), "latent_channels": m, "hyper_channels": c, "model_hash": model_hash}
    save_context(proxy, path, meta)
    return path


def tiny_verify_args(tmp_path: Path, steps: int) -> list:
    """Search arguments of a 2×2 run on tiny random latents with an untrained proxy, verified
    (--verify 1) with dedicated models of ``steps`` steps trained on other random latents."""
    from .test_costs import CH, M, random_latents

    random_latents(seed=0).save(tmp_path / "held.pt")
    random_latents(seed=1).save(tmp_path / "train.pt")
    proxy = untrained_proxy(tmp_path / "proxy.pt", 2, "test", M, CH)
    args = ["--patch", "2", "--latents", tmp_path / "held.pt", "--proxy", proxy, "--bootstrap", "100"]
    args += ["--verify", "1", "--train-latents", tmp_path / "train.pt", "--verify-steps", steps]
    return args + ["--verify-early-stop", "0"]  # a fixed budget; tests of early stopping give their own


def test_dedicated_stability_of_a_tiny_run_with_curves(tmp_path, monkeypatch, capsys):
    """A verified 2×2 run with --verify-curve 2 (three steps, fine-tuned from the proxy): each step's
    ranking against the final one, as the script reports it; the interval need not divide the
    steps, the final model's rate still ends each curve."""
    from orderopt import search

    run = tmp_path / "run"
    args = [*tiny_verify_args(tmp_path, 3), "--verify-curve", "2", "--out", run]
    assert search.main(list(map(str, args))) == 0
    dedicated = json.loads((run / "manifest.json").read_text())["dedicated"]
    assert all([p["step"] for p in d["held_out_curve"]] == [2, 3] for d in dedicated.values())
    assert all(d["held_out_curve"][-1]["bits_per_latent"] == d["bits_per_latent"] for d in dedicated.values())
    out = tmp_path / "stability"
    run_main(monkeypatch, "dedicated_stability", run, "--out", out)
    result, text = outputs(tmp_path, "stability")
    assert result["steps"] == [0, 2, 3] and result["final_step"] == 3
    assert result["final"] == {n: d["bits_per_latent"] for n, d in dedicated.items()}
    orders = {
        n: v for n, v in result["final"].items() if n not in ("hyperprior", "checkerboard", "autoregressive")
    }
    assert result["n_orders"] == len(orders) >= 3 and result["final_best_order"] == min(
        orders, key=orders.get
    )
    settled = result["orders_settled_step"]  # never the last step alone: it agrees by construction
    assert settled in (0, 2, None) and ("has not been shown to settle" in text) == (settled is None)
    last = result["rows"][-1]  # the final step against itself
    assert last["spearman_all"] == pytest.approx(1) and last["spearman_orders"] == pytest.approx(1)
    assert last["best_order"] == result["final_best_order"] and last["regret_percent"] == 0
    assert last["median_abs_change_to_final_percent"] == 0
    first = result["rows"][0]  # before fine-tuning: the proxy's weights
    start = {n: d["start_bits_per_latent"] for n, d in dedicated.items()}
    assert first["spearman_all"] == pytest.approx(
        stats.spearmanr(
            [start[n] for n in sorted(start)], [result["final"][n] for n in sorted(start)]
        ).statistic
    )
    import pandas as pd

    proxy = pd.read_csv(run / "candidates.csv").set_index("order")["proxy_bits_per_latent"].dropna()
    rated = sorted(set(proxy.index) & set(start))  # this proxy does not rate autoregressive
    assert "autoregressive" not in rated and len(rated) == len(start) - 1
    assert first["spearman_proxy"] == pytest.approx(
        stats.spearmanr([start[n] for n in rated], [proxy[n] for n in rated]).statistic
    )
    assert first["best_vs_autoregressive_percent"] == pytest.approx(
        100 * (start[first["best_order"]] / start["autoregressive"] - 1)
    )
    assert [len(t) for t in md_tables(text)] == [3, len(result["final"])]
    assert (tmp_path / "stability.png").stat().st_size > 0
    # drift: each model's lowest point on its curve, the final rate's rise above it, the verdict
    curve = {
        n: {0: start[n], **{p["step"]: p["bits_per_latent"] for p in d["held_out_curve"]}}
        for n, d in dedicated.items()
    }
    for n, c in curve.items():
        assert result["early_stopped"]["rates"][n] == min(c.values())
        assert result["rise_to_final_percent"][n] == pytest.approx(100 * (c[3] / min(c.values()) - 1))
    rose = statistics.median(result["rise_to_final_percent"].values()) > 0.1
    assert result["rates_rose"] == rose and ("rise with more steps" in text) == rose
    assert all(
        len(p) == 3 and p["train_bits_per_latent"] > 0
        for d in dedicated.values()
        for p in d["held_out_curve"]
    )
    assert "training crops' rate" in text
    # a verified run without curves is refused in one line
    plain = tmp_path / "plain"
    i = args.index("--verify-curve")
    assert search.main(list(map(str, [*args[:i], "--out", plain]))) == 0
    assert importlib.import_module("dedicated_stability").main([str(plain), "--out", str(out)]) == 2
    assert "--verify-curve" in capsys.readouterr().err


def test_dedicated_spread_of_two_tiny_verified_runs(tmp_path, monkeypatch):
    """Two verified 2×2 runs on tiny latents that differ in --seed (one dedicated step each)."""
    from orderopt import search

    common = [*tiny_verify_args(tmp_path, 1), "--verify-init", "scratch"]
    runs = [tmp_path / f"run{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        assert search.main([*map(str, common), "--seed", str(seed), "--out", str(run)]) == 0
    out = tmp_path / "spread"
    run_main(monkeypatch, "dedicated_spread", *runs, "--out", out)
    result = json.loads(out.with_suffix(".json").read_text())
    names = ["run0 (seed 0, scratch)", "run1 (seed 1, scratch)"]
    assert result["runs"] == [str(r) for r in runs] and result["command"].endswith(f"--out {out}")
    table = result["table"]
    # every verified candidate of both runs: the baselines, the published orders, the best and the worst
    assert {"hyperprior", "checkerboard", "autoregressive", "0,1;2,3", "0,2;3,1"} <= {
        r["order"] for r in table
    }
    assert len(table) == 7
    for r in table:
        a, b = r[names[0]], r[names[1]]
        assert finite(a, b) and 1 < a < 64 and 1 < b < 64  # bits per latent of small integers
        assert r["mean"] == pytest.approx((a + b) / 2) and r["spread"] == pytest.approx(abs(a - b))
    assert [r["mean"] for r in table] == sorted(r["mean"] for r in table)
    orders = [r for r in table if r["source"] != "baseline"]
    for name, rows in (("all", table), ("orders_only", orders)):
        c = result[name]
        assert c["n"] == len(rows) and list(c["run_vs_run"]) == [f"{names[0]} ~ {names[1]}"]

        def rho(a: str, b: str, rows=rows) -> float:  # over the rows rated by both, as the script's
            pairs = np.array([(r[a], r[b]) for r in rows if finite(r[a], r[b])])
            return stats.spearmanr(*pairs.T).statistic if len(pairs) >= 3 else float("nan")

        assert c["run_vs_run"][f"{names[0]} ~ {names[1]}"] == pytest.approx(rho(*names), nan_ok=True)
        for n in names:
            assert c["proxy_vs_run"][n] == pytest.approx(rho("proxy_bits_per_latent", n), nan_ok=True)
    assert result["median_run_spread"] == pytest.approx(float(np.median([r["spread"] for r in orders])))
    assert result["orders_range_of_mean"] == pytest.approx(
        max(r["mean"] for r in orders) - min(r["mean"] for r in orders)
    )
    text = out.with_suffix(".md").read_text()
    (rows,) = md_tables(text)
    assert [r["order"] for r in rows] == [r["order"] for r in table]
    assert list(rows[0]) == ["order", "source", "proxy_bits_per_latent", *names, "mean", "spread"]
    assert "- orders_only (n=4): Spearman between runs" in text


def test_bd_rate_contexts_best_is_the_search_pick_not_the_held_out_winner():
    """On the dedicated basis the rank-1 order won on the held-out rates the table reports; the
    "best" row is the order the search picked (lowest proxy rate)."""
    import pandas as pd

    df = pd.DataFrame(
        {
            "order": ["0,1;2,3", "0,2;1,3", "hyperprior", "checkerboard", "autoregressive"],
            "source": ["exhaustive+paper", "dp", "baseline", "baseline", "baseline"],
            "proxy_bits_per_latent": [0.80, 0.79, 0.9, 0.82, 0.81],
        }
    )
    rows = bdc.named_rows(df, 2)
    assert rows["best 2×2 (0,2;1,3)"]["order"] == "0,2;1,3"
    assert rows["paper 2×2"]["order"] == "0,1;2,3"


def test_bd_rate_contexts_lists_where_early_stopped_models_stopped(tmp_path):
    runs = []
    for q, stop in enumerate((250, 375, 0)):
        run = tmp_path / f"q{q + 1}"
        run.mkdir()
        dedicated = {"autoregressive": {"stopped_at": stop, "steps_run": stop + 250}, "0,1;2,3": {}}
        (run / "manifest.json").write_text(json.dumps({"dedicated": dedicated}))
        runs.append(run)
    entries = [
        {"name": "autoregressive", "orders": ["autoregressive"] * 3},
        {"name": "x", "orders": ["0,1;2,3"] * 3},
    ]
    text = "\n".join(bdc.stopping_lines(runs, entries))
    assert "| autoregressive | 250 / 500 ; 375 / 625 ; 0 / 250 |" in text and "| x | – ; – ; – |" in text
    (runs[1] / "manifest.json").write_text(json.dumps({"dedicated": {"autoregressive": {}}}))
    assert bdc.stopping_lines(runs, entries) == []  # fixed-budget runs: nothing to list


def test_bd_rate_contexts_refuses_runs_on_different_bases(photo_dir, tmp_path, monkeypatch):
    import shutil

    runs = []
    for q in ("-q1", "", "-q3"):
        runs.append(tmp_path / f"run{q}")
        shutil.copytree(RESULTS / f"search-patch2{q}", runs[-1])
    csv = runs[1] / "candidates.csv"
    csv.write_text(csv.read_text().replace(",proxy,", ",dedicated,"))
    with pytest.raises(SystemExit, match="different bases"):
        run_main(monkeypatch, "bd_rate_contexts", "--runs", *runs, "--images", photo_dir, "--out", tmp_path)


def test_bd_rate_contexts_of_the_committed_quality_runs(photo_dir, tmp_path, monkeypatch):
    """The committed q1–q3 runs (read only), with the PSNR measured on two small photographs."""
    import pandas as pd

    groups = [[RESULTS / f"search-patch{k}{q}" for q in ("-q1", "", "-q3")] for k in (2, 4)]
    args = [a for g in groups for a in ("--runs", *g)]
    run_main(monkeypatch, "bd_rate_contexts", *args, "--images", photo_dir, "--out", tmp_path)
    result, text = outputs(tmp_path, "bd_rate_contexts")
    assert (tmp_path / "bd_rate_contexts.png").stat().st_size > 0
    assert result["command"].endswith(f"--images {photo_dir} --out {tmp_path}")  # reruns into the same file
    assert "2×2 runs, proxy rates:" in text
    rows = result["rows"]
    for k, runs in zip((2, 4), groups, strict=True):
        mine = {r["name"].split(" (")[0]: r for r in rows if r["patch"] == k}
        assert {"hyperprior", "checkerboard", "autoregressive", f"paper {k}×{k}", f"best {k}×{k}"} <= set(
            mine
        )
        psnr = mine["checkerboard"]["psnr"]
        assert psnr == sorted(psnr) and all(15 < v < 50 for v in psnr)  # q1 < q2 < q3
        cb = [pd.read_csv(r / "candidates.csv").set_index("order").loc["checkerboard", "bpp"] for r in runs]
        assert mine["checkerboard"]["bpp"] == pytest.approx(cb)
        assert mine["checkerboard"]["bd_rate_vs_checkerboard_pct"] == pytest.approx(0, abs=1e-6)
        assert mine["autoregressive"]["bd_rate_vs_autoregressive_pct"] == pytest.approx(0, abs=1e-6)
        assert mine["hyperprior"]["bd_rate_vs_checkerboard_pct"] > 0  # no context costs bits
        best = mine[f"best {k}×{k}"]  # one order named, or each quality's pick listed
        several = len(set(best["orders"])) > 1
        assert best["name"].endswith("each quality's pick)") == several
        assert (f"q3 `{best['orders'][2]}`" in text) == several
        for r in mine.values():
            assert r["psnr"] == psnr and len(r["orders"]) == 3 and all(0 < b < 2 for b in r["bpp"])
            for b in ("checkerboard", "autoregressive"):
                assert -20 < r[f"bd_rate_vs_{b}_pct"] < 20
                assert all(lo - 1e-9 <= g <= hi + 1e-9 for g, lo, hi in r[f"gain_vs_{b}_pct"])
    tables = md_tables(text)
    assert [[r["schedule"] for r in t] for t in tables] == [
        [r["name"] for r in rows if r["patch"] == k] for k in (2, 4)
    ]
    assert text.count(f"PSNR (dB) of q1–q3 on {photo_dir}: ") == 2


def test_context_curves_of_the_committed_records(image_dir, tmp_path, monkeypatch):
    """The committed training records (read only); the base rate on the small images; the
    figure and tables written to the test's folder, not beside the records."""
    records = RESULTS / "context"
    before = {p: p.stat().st_mtime_ns for p in records.iterdir()}
    run_main(monkeypatch, "context_curves", "--dir", records, "--out", tmp_path, "--images", image_dir)
    assert {p: p.stat().st_mtime_ns for p in records.iterdir()} == before
    result, text = outputs(tmp_path, "curves")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert result["command"] == f"python experiments/context_curves.py --dir {records} --out {tmp_path} " + (
        f"--images {image_dir}"
    )
    qualities = sorted({p.name.split("_")[0] for p in records.glob("q*_*.json")})
    curves = result["curves"]
    assert [k for k in curves if k.endswith("/base")] == [f"{q}/base" for q in qualities]
    for key, c in curves.items():
        if key.endswith("/base"):
            assert finite(c) and 0 < c < 32
            continue
        q, name, _ = key.split("/")
        assert (records / f"{q}_{name}.json").is_file()
        steps = c["steps"]
        assert steps == sorted(set(steps)) and steps[0] > 0  # stages continue each other's steps
        assert len(c["values"]) == len(steps) and all(finite(v) and 0 < v < 32 for v in c["values"])
    base, table = md_tables(text)
    assert [r["quality"] for r in base] == qualities
    assert len(table) == len(curves) - len(qualities)
    for row in table:
        assert int(row["steps"]) > 0 and finite(float(row["first"]), float(row["last"]))


def test_bench_context_on_the_tiny_model(tiny_ckpt, image_dir, tmp_path, monkeypatch):
    run_main(monkeypatch, "bench_context", "--model", tiny_ckpt, "--images", image_dir, "--out", tmp_path)
    result, text = outputs(tmp_path, "bench_context")
    assert set(result) == {
        "device", "torch", "latent_channels", "latents", "cost_table", "multistage_4x4", "training_forms_ms",
        "command",
    }  # fmt: skip
    assert result["latent_channels"] == 12
    assert result["latents"] == {"a.png": [8, 8], "b.jpg": [8, 4], "sub/c.png": [4, 12]}  # padded to 64, /16
    assert result["command"].endswith(f"--model {tiny_ckpt} --images {image_dir}")
    for k, n in ((2, 16), (3, 512), (4, 65536)):
        r = result["cost_table"][f"{k}x{k}"]
        assert r["full_table_subsets"] == n and finite(*r.values()) and min(r.values()) >= 0
        assert r["speedup"] == pytest.approx(r["subsets_per_s"] / r["plain_forward_subsets_per_s"])
        assert r["full_table_s"] == pytest.approx(r["setup_s"] + n / r["subsets_per_s"])
    ms = result["multistage_4x4"]
    assert finite(*ms["latent"], *(v for k, v in ms.items() if k != "latent"))
    assert ms["naive_over_strided"] == pytest.approx(ms["naive_s"] / ms["strided_s"])
    assert list(result["training_forms_ms"]) == ["2x2", "3x3", "4x4"]
    assert all(
        set(r) == {"strided", "unfolded", "fused"} and min(r.values()) > 0
        for r in result["training_forms_ms"].values()
    )
    cost, training = md_tables(text)
    assert [r["patch"] for r in cost] == ["2x2", "3x3", "4x4"] and [r["patch"] for r in training] == [
        "2x2",
        "3x3",
        "4x4",
    ]
    assert f"Latents of the 3 images in {image_dir}." in text


def test_bench_cost_table_at_3x3_on_the_tiny_model(tiny_ckpt, image_dir, tmp_path, monkeypatch):
    import torch

    from orderopt import orders as od
    from orderopt import strategies
    from orderopt.costs import CostTable

    proxy = untrained_proxy(tmp_path / "proxy3.pt", 3, torch.load(tiny_ckpt)["hash"])
    args = [
        "--model",
        tiny_ckpt,
        "--proxy",
        proxy,
        "--images",
        image_dir,
        "--patch",
        "3",
        "--fractions",
        "0.5",
    ]
    args += ["--row-fractions", "0.5", "--seeds", "1", "--probe", "32", "--cache", tmp_path / "rows"]
    run_main(
        monkeypatch, "bench_cost_table", *args, "--save-table", tmp_path / "costs.npz", "--out", tmp_path
    )
    result, text = outputs(tmp_path, "bench_cost_table")
    assert result["patch"] == 3 and result["images"] == f"images in {image_dir}"
    # latents of 8×8, 8×4 and 4×12: 144 positions, 23 of them at in-patch position 0
    assert sum(result["rows_per_position"]) == 144 and result["rows_per_position"][0] == 23
    (cache,) = (tmp_path / "rows").iterdir()  # named by the model and the proxy, not by --quality
    assert cache.name.startswith(f"{torch.load(tiny_ckpt)['hash']}-{torch.load(proxy)['hash']}-k3-")
    assert sorted(p.name for p in cache.iterdir()) == [f"rows_q{q}.npy" for q in range(9)]
    e = result["exact"]
    assert finite(e["sets_per_s"], e["dp_bits_per_latent"]) and e["sets_per_s"] > 0
    # the saved exact table is the one the DP optimum and the frontier come from
    table = CostTable.load(tmp_path / "costs.npz")
    order, bits = strategies.dp(table)
    assert str(order) == e["dp_order"] and bits / table.num_elements == pytest.approx(e["dp_bits_per_latent"])
    assert [t for t, _, _ in e["frontier"]] == list(range(1, 10))
    for _, o, b in e["frontier"]:
        assert table.rate(od.DecodingOrder.parse(o)) / table.num_elements == pytest.approx(b)
        assert b >= e["frontier"][-1][2] - 1e-12  # more stages never cost more
    s = result["surrogate"]["0.5"]
    (run,) = s["runs"]
    assert 92 <= run["sets_computed"] <= 512 and run["rounds"] >= 1  # at least the anchors
    assert run["dp_regret_pct"] >= -1e-9 and min(run["frontier_regret_pct"]) >= -1e-9
    assert 0 <= run["frontier_same"] <= 9 and finite(run["fit_error_std_pct"], run["fit_error_max_pct"])
    assert result["row_sampling"]["0.5"]["max_dp_regret_pct"] >= -1e-9
    surrogate_rows, row_rows = md_tables(text)
    assert [r["sets drawn"] for r in surrogate_rows] == ["0.5"] and [r["rows kept"] for r in row_rows] == [
        "0.5"
    ]
    assert f"Model {tiny_ckpt}, proxy {proxy}, the images in {image_dir}" in text


def test_bench_decode_on_the_tiny_model(tiny_ckpt, image_dir, tmp_path, monkeypatch):
    """Real streams of every schedule, encoded and decoded once, on the three small images."""
    import torch

    args = ["--model", tiny_ckpt, "--images", image_dir, "--reference", "a.png", "--repeat", "1"]
    run_main(monkeypatch, "bench_decode", *args, "--precision", "float32", "--out", tmp_path)
    result, text = outputs(tmp_path, "decode_time")
    assert set(result) == {
        "device", "torch", "model_hash", "repeat", "coder", "note", "median_over_images", "ratios", "rows",
        "command", "load_average_1min",
    }  # fmt: skip
    assert all(v >= 0 for v in result["load_average_1min"].values())
    assert result["model_hash"] == torch.load(tiny_ckpt)["hash"] and result["repeat"] == 1
    schedules = ["hyperprior", "checkerboard", "paper 2x2", "paper 4x4", "autoregressive"]
    assert list(result["median_over_images"]) == schedules
    rows = result["rows"]
    assert [(r["image"], r["schedule"]) for r in rows] == [
        (im, s) for im in ("a.png", "b.jpg", "sub/c.png") for s in schedules
    ]
    for r in rows:
        assert finite(
            r["latent_s"], r["network_s"], r["coding_s"], r["hyper_s"], r["synthesis_s"], r["decode_s"]
        )
        assert r["latent_s"] == pytest.approx(r["network_s"] + r["coding_s"]) and r["latent_s"] > 0
        assert r["decode_s"] >= 0.99 * (r["latent_s"] + r["hyper_s"] + r["synthesis_s"])
        assert r["bytes"] > 0 and 8 * r["bytes"] > 0.9 * r["estimated_bits"] > 0 and r["substreams"] >= 1
    a = {r["schedule"]: r for r in rows if r["image"] == "a.png"}  # 96×80, coded as 128×128: 8×8 latents
    assert [a[s]["stages"] for s in schedules] == [1, 2, 4, 16, 64]
    assert (a["hyperprior"]["width"], a["hyperprior"]["height"]) == (96, 80)
    ratios = result["ratios"]
    assert ratios["autoregressive_over_4x4_on_768x512"] == pytest.approx(
        a["autoregressive"]["latent_s"] / a["paper 4x4"]["latent_s"]
    )
    assert ratios["fastest_precision"] == {
        "autoregressive": "float32",
        "paper 4x4": "float32",
        "hyperprior": "float32",
    }
    assert all(finite(v) and v > 0 for k, v in ratios.items() if k != "fastest_precision")
    (table,) = md_tables(text)
    assert [r["schedule"] for r in table] == schedules
    assert [r["serial stages (a.png)"] for r in table] == ["1", "2", "4", "16", "64"]
    assert "autoregressive / 4×4 on the 128×128 (padded) a.png" in text
    assert f"Median over the images in {image_dir} of the median of 1 decodes" in text


def test_bench_decode_coders_only_on_few_symbols(tmp_path, monkeypatch):
    run_main(
        monkeypatch, "bench_decode", "--coders-only", "--symbols", "3000", "--repeat", "1", "--out", tmp_path
    )
    result, text = outputs(tmp_path, "coder_throughput")
    assert not (tmp_path / "decode_time.json").exists()
    assert result["symbols"] == 3000 and result["command"].endswith("--coders-only --symbols 3000")
    for key in ("encode_s", "decode_s", "decode_2_substreams_2_threads_s", "decode_one_fixed_categorical_s"):
        assert finite(result[key]) and 0 < result[key] < 10
    assert result["decode_ns_per_symbol"] == pytest.approx(1e9 * result["decode_s"] / 3000)
    # a few bits per symbol (scales 0.11–8), in whole 32-bit words; more substreams, more words
    assert 3000 < result["constriction_bits"] < 3000 * 8 and result["constriction_bits"] % 32 == 0
    bits = [result["rans"][f"bits_{p}_substreams"] for p in (1, 2, 8)]
    assert bits == sorted(bits) and result["constriction_bits"] <= bits[0] < 1.1 * result["constriction_bits"]
    assert all(finite(v) and v > 0 for v in result["rans"].values())
    assert text.startswith("# Entropy-coder throughput") and "3000 symbols under per-symbol quantized" in text


def test_bench_train_on_the_tiny_model(tiny_ckpt, image_dir, tmp_path, monkeypatch):
    args = ["--steps", "2", "--model", tiny_ckpt, "--images", image_dir, "--batch", "2", "--crop", "4"]
    run_main(monkeypatch, "bench_train", *args, "--warmup", "1", "--out", tmp_path)
    result, text = outputs(tmp_path, "bench_train")
    assert set(result) == {"device", "torch", "config", "models", "command"}
    assert result["config"] == {"batch": 2, "crop": 4, "steps": 2}
    assert (
        result["command"] == "python experiments/bench_train.py " + " ".join(map(str, args)) + " --warmup 1"
    )
    names = ["proxy 2x2", "proxy 4x4", "multistage 2x2 (paper)", "multistage 4x4 (paper)", "autoregressive"]
    assert list(result["models"]) == names
    for r in result["models"].values():
        assert finite(r["steps_per_s"]) and r["steps_per_s"] > 0
        assert r["seconds_per_1000_steps"] == pytest.approx(1000 / r["steps_per_s"])
    (table,) = md_tables(text)
    assert [r["model"] for r in table] == names
    assert "Batch 2 crops of 4×4 latents, 2 timed steps after 1 warm-up steps." in text


def test_precision_rate_on_one_small_image(image_dir, tmp_path, monkeypatch):
    """The shipped models (their context models belong to them) on one 64×64 image."""
    from PIL import Image

    from orderopt.model import read_checkpoint, shipped_weights

    one = tmp_path / "one"
    one.mkdir()
    with Image.open(image_dir / "b.jpg") as im:
        im.crop((0, 0, 64, 64)).save(one / "b.png")
    run_main(monkeypatch, "precision_rate", "--images", one, "--out", tmp_path)
    result, text = outputs(tmp_path, "precision_rate")
    assert set(result) == {"device", "torch", "model_hash", "summary", "rows", "command"}
    assert result["model_hash"] == read_checkpoint(shipped_weights())["hash"]
    labels = ["autoregressive", "proxy checkerboard", "proxy paper 2x2", "proxy paper 4x4"]
    labels.append("multistage paper 4x4 (from the proxy)")
    assert [(r["context"], r["image"]) for r in result["rows"]] == [(label, "b.png") for label in labels]
    for r in result["rows"]:
        b32, b16 = r["payload_bits_float32"], r["payload_bits_bfloat16"]
        assert r["pixels"] == 64 * 64 and b32 % 32 == b16 % 32 == 0 and 0 < b32 < 24 * r["pixels"]
        assert r["change_percent"] == pytest.approx(100 * (b16 / b32 - 1)) and abs(r["change_percent"]) < 2
        e32, e16 = r["estimated_bits_float32"], r["estimated_bits_bfloat16"]
        assert 0.9 * e32 < b32 and abs(r["estimate_change_percent"]) < 1
        assert r["estimate_change_percent"] == pytest.approx(100 * (e16 / e32 - 1))
        assert r["rans_over_estimate_percent"] == pytest.approx(100 * (b32 / e32 - 1))
        assert abs(r["gaussian_over_estimate_percent"]) < 10  # a few 32-bit words on a small image
        assert 200 < r["header_bytes_rans"] < 1000 and 200 < r["header_bytes_gaussian"] < 1000
    assert list(result["summary"]) == labels
    for label, s in result["summary"].items():
        (row,) = [r for r in result["rows"] if r["context"] == label]
        assert s["change_percent"] == dict.fromkeys(("median", "min", "max"), row["change_percent"])
        assert s["header_bytes_rans"]["max"] == row["header_bytes_rans"]
    table, sizes = md_tables(text)
    assert [r["context model"] for r in table] == [r["context model"] for r in sizes] == labels
    assert f"Regenerate: `python experiments/precision_rate.py --images {one}`" in text


def test_proxy_gaps_on_the_tiny_model(tiny_model, tiny_ckpt, image_dir, tmp_path, monkeypatch):
    """Untrained 2×2 and 4×4 proxies of the tiny model and dedicated models of one step; a
    second run resumes the dedicated models and takes the autoregressive one as given."""
    import torch

    from orderopt import data
    from orderopt.latents import extract_latents

    model_hash = torch.load(tiny_ckpt)["hash"]
    extract_latents(tiny_model, data.load_images(image_dir), model_hash, progress=False).save(
        tmp_path / "train.pt"
    )
    proxies = [untrained_proxy(tmp_path / f"proxy_k{k}.pt", k, model_hash) for k in (2, 4)]
    args = ["--train-latents", tmp_path / "train.pt", "--images", image_dir, "--model", tiny_ckpt]
    args += ["--proxy", *proxies, "--models", tmp_path / "dedicated", "--steps", "1", "--bootstrap", "200"]
    run_main(monkeypatch, "proxy_gaps", *args, "--out", tmp_path / "first")
    result, text = outputs(tmp_path / "first", "proxy_gaps")
    assert (
        result["model_hash"] == model_hash and result["images"] == 3 and result["held_out"] == str(image_dir)
    )
    assert result["bootstrap"]["resamples"] == 200
    assert [(n, r["patch"]) for n, r in result["proxies"].items()] == [("proxy_k2", 2), ("proxy_k4", 4)]
    gaps = [*result["proxies"].values(), result["dedicated_gaps"]]
    for g in (
        g[key]
        for g in gaps
        for key in ("autoregressive_vs_checkerboard_pct", "hyperprior_vs_checkerboard_pct")
    ):
        assert finite(*g.values()) and g["ci_low"] - 1e-9 <= g["gain"] <= g["ci_high"] + 1e-9
    assert list(result["dedicated"]) == ["hyperprior", "checkerboard", "autoregressive"]
    assert all(
        finite(d["bits_per_latent"]) and d["bits_per_latent"] > 0 and d["steps"] == 1
        for d in result["dedicated"].values()
    )
    assert sorted(p.name for p in (tmp_path / "dedicated").glob("*.pt")) == [
        "autoregressive-1.pt", "checkerboard-1.pt", "hyperprior-1.pt"
    ]  # fmt: skip
    (table,) = md_tables(text)
    assert [r["rates from"] for r in table] == [
        "proxy proxy_k2 (raster fraction 0.0)", "proxy proxy_k4 (raster fraction 0.0)", "dedicated models"
    ]  # fmt: skip
    assert f"--model {tiny_ckpt} --proxy {proxies[0]} {proxies[1]}" in result["command"]
    # again, resuming the kept models, with the autoregressive one given: the same rates
    ar = tmp_path / "dedicated" / "autoregressive-1.pt"
    args.remove(proxies[1])  # (one proxy is enough here)
    run_main(monkeypatch, "proxy_gaps", *args, "--autoregressive", ar, "--out", tmp_path / "again")
    again, _ = outputs(tmp_path / "again", "proxy_gaps")
    assert again["dedicated"] == result["dedicated"] and again["dedicated_gaps"] == result["dedicated_gaps"]
    assert f"--autoregressive {ar}" in again["command"]


def test_mixture_orders_of_a_gaussian_and_a_mixture_run(tmp_path, monkeypatch):
    """Two 2×2 runs on the same tiny latents, one with a K = 1 and one with a K = 3 proxy."""
    from orderopt import search

    from .test_costs import CH, M, random_latents

    random_latents(seed=0).save(tmp_path / "held.pt")
    runs = []
    for k in (1, 3):
        proxy = untrained_proxy(tmp_path / f"p{k}.pt", 2, "test", M, CH, mixture=k)
        runs.append(tmp_path / f"run{k}")
        args = ["--patch", "2", "--latents", tmp_path / "held.pt", "--proxy", proxy, "--bootstrap", "100"]
        assert search.main([*map(str, args), "--out", str(runs[-1])]) == 0
    run_main(monkeypatch, "mixture_orders", "--pair", *runs, "--out", tmp_path)
    result, text = outputs(tmp_path, "mixture_orders")
    (c,) = result["pairs"]
    import pandas as pd

    a, b = (pd.read_csv(r / "candidates.csv") for r in runs)
    a, b = (d[d["source"] != "baseline"].set_index("order")["proxy_bits_per_latent"] for d in (a, b))
    assert c["mixture"] == [1, 3] and c["orders_compared"] == 24 and c["patch"] == 2
    assert c["spearman"] == pytest.approx(stats.spearmanr(a, b[a.index]).statistic)
    assert c["best_a"] == a.index[0] and c["best_b"] == b.index[0]
    assert c["same_best"] == (a.index[0] == b.index[0])
    assert c["rank_of_best_a_under_b"] == list(b.index).index(a.index[0]) + 1
    assert c["regret_under_b_of_best_a_pct"] == pytest.approx(100 * (b[a.index[0]] / b.iloc[0] - 1))
    assert c["regret_under_b_of_best_a_pct"] >= 0 and 0 <= c["top_shared"] <= 5
    for v in c["baselines"].values():
        ratio = v["b_bits_per_latent"] / v["a_bits_per_latent"]
        assert v["b_over_a_pct"] == pytest.approx(100 * (ratio - 1), nan_ok=True)
    table, base = md_tables(text)
    assert table[0]["best, K = 1"] == f"`{a.index[0]}`" and len(base) == 3
    assert c["regret_under_a_of_best_b_pct"] >= 0 and result["labels"] == ["K = 1", "K = 3"]
    # the same comparison under any labels (e.g. a shipped and a converged proxy)
    run_main(monkeypatch, "compare_proxies", "--pair", *runs, "--labels", "shipped", "converged",
             "--stem", "cmp", "--out", tmp_path)  # fmt: skip
    generic, text = outputs(tmp_path, "cmp")
    assert generic["pairs"] == result["pairs"] and generic["labels"] == ["shipped", "converged"]
    assert md_tables(text)[0][0]["best, converged"] == f"`{b.index[0]}`"


def test_converge_summary_names_a_snapshot_start():
    label = importlib.import_module("converge_summary").init_label
    assert label(None) is None and label({"from": "w/q2/p.pt", "model_hash": "x"}) == "w/q2/p.pt"
    snap = {"from": "s.pt", "steps_done": 8700, "init": {"from": "w/q2/p.pt"}}
    assert label(snap) == "s.pt (a run of 8,700 steps from w/q2/p.pt)"
    snap["init"]["bits_per_latent"] = 0.81349
    assert label(snap) == "s.pt (a run of 8,700 steps from w/q2/p.pt, which rates 0.8135)"


def test_converge_summary_of_a_real_converged_run(tiny_ckpt, image_dir, tmp_path, monkeypatch):
    """A tiny proxy trained with --converge until the rule stops it; the summary's figures are
    those of its record."""
    from orderopt import train

    records = tmp_path / "records"
    records.mkdir()
    out = tmp_path / "q2_proxy_k2.pt"
    args = ["context", "--train-images", str(image_dir), "--eval-images", str(image_dir),
            "--model", str(tiny_ckpt), "--cache-dir", str(tmp_path / "cache"), "--steps", "40",
            "--batch", "2", "--crop", "4", "--proxy", "--patch", "2", "--eval-every", "2",
            "--converge", "1", "--min-delta", "0.5", "--out", str(out)]  # fmt: skip
    assert train.main(args) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    (records / "q2_proxy_k2.json").write_text(json.dumps(record))
    run_main(monkeypatch, "converge_summary", "--dir", records, "--out", tmp_path / "sum")
    result, text = outputs(tmp_path / "sum", "converge_summary")
    assert (tmp_path / "sum" / "converge_summary.png").stat().st_size > 0
    s = result["models"]["q2_proxy_k2"]
    curve = record["held_out_curve"]
    assert s["converged"] and s["start"] == curve[0]["bits_per_latent"] and s["lowest"] == min(s["values"])
    assert s["drops_at"] == [p["step"] for p in curve if p["event"] == "drop"] and len(s["drops_at"]) == 2
    final = next(p for p in curve if p["step"] == s["lowest_step"])["orders"]
    assert s["final_best"] == min(final, key=final.get)
    at_lowest = next(r for r in s["ranking"] if r["step"] == s["lowest_step"])
    assert at_lowest["spearman"] == pytest.approx(1.0) and at_lowest["regret_percent"] == 0
    assert all(r["regret_percent"] >= 0 for r in s["ranking"])
    table = md_tables(text)[0]
    assert [r["model"] for r in table] == ["q2_proxy_k2"] and table[0]["stopped by the rule"] == "yes"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert importlib.import_module("converge_summary").main(["--dir", str(empty)]) == 2
