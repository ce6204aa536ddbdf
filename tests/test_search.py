import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from orderopt import orders as o
from orderopt import search, train
from orderopt.results import COLUMNS, FRONTIER_COLUMNS, rank_correlations, settings_key


@pytest.fixture
def setup(tmp_path, tiny_ckpt, image_dir):
    """A tiny base model, a tiny 2×2 proxy trained for a few steps, and the images."""
    cache = tmp_path / "cache"
    proxies = {}
    for k in (2, 3):
        proxies[k] = tmp_path / f"proxy{k}.pt"
        assert (
            train.main(
                [
                    "context",
                    "--proxy",
                    "--patch",
                    str(k),
                    "--train-images",
                    str(image_dir),
                    "--eval-images",
                    str(image_dir),
                    "--model",
                    str(tiny_ckpt),
                    "--cache-dir",
                    str(cache),
                    "--steps",
                    "3",
                    "--batch",
                    "2",
                    "--crop",
                    "4",
                    "--out",
                    str(proxies[k]),
                ]
            )
            == 0
        )
    common = ["--model", str(tiny_ckpt), "--images", str(image_dir), "--cache-dir", str(cache)]
    return tmp_path, common, proxies


def run(*args):
    return subprocess.run([sys.executable, "-m", "orderopt.search", *args], capture_output=True, text=True)


def test_patch2_exhaustive_run(setup, capsys):
    tmp, common, proxies = setup
    out = tmp / "run"
    assert search.main(["--patch", "2", *common, "--proxy", str(proxies[2]), "--out", str(out)]) == 0
    df = pd.read_csv(out / "candidates.csv")
    assert list(df.columns) == COLUMNS
    orders = df[df["source"] != "baseline"]
    assert len(orders) == 24 and orders["symmetry_class"].nunique() == 3
    assert {"hyperprior", "checkerboard", "autoregressive"} <= set(df["order"])
    assert df["rank"].tolist() == list(range(1, len(df) + 1)) and df["bpp"].is_monotonic_increasing
    # one basis for every row: the proxy (trained with the raster context) rates autoregressive too
    assert (df["basis"] == "proxy").all() and df["dedicated_bits_per_latent"].isna().all()
    assert df["proxy_bits_per_latent"].is_monotonic_increasing
    for b in ("checkerboard", "autoregressive"):
        g, lo, hi = (df[f"gain_vs_{b}_{c}"] for c in ("pct", "ci_low", "ci_high"))
        assert np.isfinite(g).all() and np.isfinite(lo).all() and np.isfinite(hi).all()
        assert (lo <= g + 1e-9).all() and (g <= hi + 1e-9).all()
    ar = df[df["order"] == "autoregressive"].iloc[0]
    assert ar["gain_vs_autoregressive_pct"] == 0 and ar["stages"] > 4
    assert not orders.iloc[0]["distinguishable_from_best"]  # the best order itself
    paper = df[df["order"] == "0,1;2,3"].iloc[0]
    assert "paper" in paper["source"] and "raster" in paper["source"]
    assert (df["source"].str.contains("tinylic")).sum() == 1
    cb = df[df["order"] == "checkerboard"].iloc[0]
    assert cb["gain_vs_checkerboard_pct"] == pytest.approx(0) and cb["symmetry_class"] == "0,1;1,0"
    assert np.isfinite(orders["gain_vs_checkerboard_pct"]).all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["latents"]["images"] == 3 and "torch" in m["versions"]
    assert (out / "costs.npz").is_file()
    # the frontier: one row per stage budget, on the candidates' rates
    fr = pd.read_csv(out / "frontier.csv")
    assert list(fr.columns) == FRONTIER_COLUMNS and fr["stages"].tolist() == [1, 2, 3, 4]
    assert fr["proxy_bits_per_latent"].is_monotonic_decreasing
    rate = dict(zip(df["order"], df["proxy_bits_per_latent"], strict=True))
    assert fr.iloc[0]["proxy_bits_per_latent"] == pytest.approx(rate["hyperprior"])
    assert fr.iloc[1]["proxy_bits_per_latent"] <= rate["checkerboard"] + 1e-9
    assert fr.iloc[3]["proxy_bits_per_latent"] <= orders["proxy_bits_per_latent"].min() + 1e-9
    assert fr.iloc[1]["gain_vs_checkerboard_pct"] <= 1e-9
    capsys.readouterr()
    assert search.main(["--patch", "2", *common, "--proxy", str(proxies[2]), "--out", str(out)]) == 0
    assert "reusing the finished run" in capsys.readouterr().out


def test_finished_run_is_recomputed_when_its_inputs_change(setup, capsys):
    """The same arguments reuse a finished run only while the files behind them are the same: a
    proxy retrained to the same path (or new shipped weights) and other images are recomputed."""
    from orderopt.fit import load_context, save_context

    tmp, common, proxies = setup
    out, proxy = tmp / "run", tmp / "mine.pt"
    proxy.write_bytes(proxies[2].read_bytes())
    args = ["--patch", "2", *common, "--proxy", str(proxy), "--out", str(out)]
    assert search.main(args) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["identity"]["proxy_hash"] == first["proxy"]["hash"]
    model, meta = load_context(proxy)
    with __import__("torch").no_grad():
        next(model.parameters()).add_(0.5)  # "retrained"
    save_context(model, proxy, {k: v for k, v in meta.items() if k not in ("format", "version", "hash")})
    capsys.readouterr()
    assert search.main(args) == 0
    printed = capsys.readouterr()
    assert "reusing" not in printed.out and "proxy changed" in printed.err
    second = json.loads((out / "manifest.json").read_text())
    assert (
        second["identity"]["proxy_hash"] == load_context(proxy)[1]["hash"] != first["identity"]["proxy_hash"]
    )
    assert search.main(args) == 0 and "reusing the finished run" in capsys.readouterr().out
    # other images in the same folder
    images = Path(common[common.index("--images") + 1])
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(sorted(images.iterdir())[1].read_bytes())
    assert search.main(args) == 0
    assert "images changed" in capsys.readouterr().err
    # a manifest from before the identity record is judged on the hashes it has
    legacy = json.loads((out / "manifest.json").read_text())
    del legacy["identity"]
    (out / "manifest.json").write_text(json.dumps(legacy))
    assert search.main(args) == 0 and "reusing the finished run" in capsys.readouterr().out


def test_stages_budget_on_3x3(setup, capsys):
    tmp, common, proxies = setup
    out = tmp / "stages"
    args = ["--patch", "3", "--strategy", "greedy", "--stages", "3", *common, "--proxy", str(proxies[3])]
    assert search.main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    fr = pd.read_csv(out / "frontier.csv")
    assert fr["stages"].tolist() == list(range(1, 10))
    best3 = fr.iloc[2]
    assert f"best schedule within 3 stages: {best3['order']}" in printed
    assert o.DecodingOrder.parse(best3["order"]).num_stages <= 3
    df = pd.read_csv(out / "candidates.csv")
    assert df[df["source"].str.contains("frontier")]["order"].tolist() == [best3["order"]]


def test_surrogate_table_picks_are_exact_and_near_the_full_tables(setup):
    """--table-fraction: a fraction of the sets computed, the rest fitted; every schedule reported
    is rated exactly, never better than the full table's optimum with as many stages."""
    from orderopt.costs import CostTable

    tmp, common, proxies = setup
    runs = {}
    for fraction in ("1", "0.5"):
        out = tmp / f"fraction{fraction}"
        base = ["--patch", "3", "--strategy", "dp", *common, "--proxy", str(proxies[3])]
        assert search.main([*base, "--table-fraction", fraction, "--out", str(out)]) == 0
        runs[fraction] = out
    info = json.loads((runs["0.5"] / "manifest.json").read_text())["strategy"]
    assert info["table_fraction"] == 0.5 and 0 < info["sets_computed"] < 512 and info["settle_rounds"] >= 1
    exact = CostTable.load(runs["1"] / "costs.npz")
    assert exact.complete and not CostTable.load(runs["0.5"] / "costs.npz").complete
    full, part = (pd.read_csv(runs[f] / "frontier.csv") for f in ("1", "0.5"))
    assert part["stages"].tolist() == list(range(1, 10))
    for (_, a), (_, b) in zip(part.iterrows(), full.iterrows(), strict=True):
        rate = exact.bits_per_latent(o.DecodingOrder.parse(a["order"]))
        assert a["proxy_bits_per_latent"] == pytest.approx(rate, rel=1e-6)  # exact, not fitted
        assert rate >= b["proxy_bits_per_latent"] - 1e-9
    df = pd.read_csv(runs["0.5"] / "candidates.csv").set_index("order")
    for order, row in df[df["source"].str.contains("dp")].iterrows():
        assert row["proxy_bits_per_latent"] == pytest.approx(
            exact.bits_per_latent(o.DecodingOrder.parse(order))
        )


@pytest.mark.parametrize("strategy", ["dp", "greedy", "optuna"])
def test_other_strategies(setup, strategy):
    tmp, common, proxies = setup
    out = tmp / strategy
    extra = ["--trials", "10"] if strategy == "optuna" else []
    assert (
        search.main(
            [
                "--patch",
                "3",
                "--strategy",
                strategy,
                *common,
                "--proxy",
                str(proxies[3]),
                "--out",
                str(out),
                "--random",
                "5",
                *extra,
            ]
        )
        == 0
    )
    df = pd.read_csv(out / "candidates.csv")
    assert strategy in set(df["source"]) and (df["source"] == "random").sum() >= 1
    assert (
        df[df["order"] == "checkerboard"]["proxy_bits_per_latent"].isna().all()
    )  # odd k: no checkerboard tiling


def test_dp_agrees_with_exhaustive_on_2x2(setup):
    tmp, common, proxies = setup
    search.main(
        [
            "--patch",
            "2",
            "--strategy",
            "exhaustive",
            *common,
            "--proxy",
            str(proxies[2]),
            "--out",
            str(tmp / "ex"),
        ]
    )
    search.main(
        ["--patch", "2", "--strategy", "dp", *common, "--proxy", str(proxies[2]), "--out", str(tmp / "dp")]
    )
    ex, dp = pd.read_csv(tmp / "ex" / "candidates.csv"), pd.read_csv(tmp / "dp" / "candidates.csv")
    best_ex = ex[ex["source"] != "baseline"].iloc[0]
    best_dp = dp[dp["source"].str.contains("dp")].iloc[0]
    assert best_dp["proxy_bits_per_latent"] == pytest.approx(best_ex["proxy_bits_per_latent"])


def test_interrupted_table_resumes(setup):
    from orderopt.costs import CostTable

    tmp, common, proxies = setup
    out = tmp / "resume"
    search.main(["--patch", "2", *common, "--proxy", str(proxies[2]), "--out", str(out)])
    (out / "manifest.json").unlink()  # as if interrupted before the end
    table = CostTable.load(out / "costs.npz")
    table.known[3:] = False
    table.known[-1] = True
    table.save(out / "costs.npz")
    assert search.main(["--patch", "2", *common, "--proxy", str(proxies[2]), "--out", str(out)]) == 0
    assert CostTable.load(out / "costs.npz").complete


def test_verify_trains_dedicated_models(setup, image_dir):
    tmp, common, proxies = setup
    out = tmp / "verify"
    assert (
        search.main(
            [
                "--patch",
                "2",
                *common,
                "--proxy",
                str(proxies[2]),
                "--out",
                str(out),
                "--verify",
                "2",
                "--train-images",
                str(image_dir),
                "--verify-steps",
                "2",
                "--verify-init",
                "scratch",
                "--verify-early-stop",
                "0",  # the fixed budget: every model exactly --verify-steps steps
                "--jobs",
                "2",
                "--dedicated-dir",
                str(tmp / "shared"),
            ]
        )
        == 0
    )
    df = pd.read_csv(out / "candidates.csv")
    have = df.dropna(subset=["dedicated_bits_per_latent"])
    published = {"0,1;2,3", "0,2;3,1"}  # raster = paper, TinyLIC
    assert {"hyperprior", "checkerboard", "autoregressive", *published} <= set(have["order"])
    ranked = df[~df["source"].isin(["baseline"])].sort_values("proxy_bits_per_latent")["order"]
    assert {*ranked.iloc[:2], ranked.iloc[-1]} <= set(have["order"])  # 2 best and the worst
    records = {p.stem: json.loads(p.read_text()) for p in (tmp / "shared").glob("*.json")}
    assert records["checkerboard"]["config"]["steps"] == 2 and records["checkerboard"]["train_s"] >= 0
    # a second run with the same training set and budget reuses the shared models
    mtimes = {p: p.stat().st_mtime for p in (tmp / "shared").glob("*.json")}
    search.main(
        ["--patch", "2", *common, "--proxy", str(proxies[2]), "--out", str(tmp / "again")]
        + ["--verify", "1", "--train-images", str(image_dir), "--verify-steps", "2"]
        + ["--verify-init", "scratch", "--verify-early-stop", "0", "--dedicated-dir", str(tmp / "shared")]
    )
    assert all(p.stat().st_mtime == t for p, t in mtimes.items())
    # started from the proxy (the default), stopped early (the default: measured at the end of a
    # budget shorter than DEFAULT_STOP_EVERY): every model records where it started and stopped
    search.main(
        ["--patch", "2", *common, "--proxy", str(proxies[2]), "--out", str(tmp / "warm")]
        + ["--verify", "1", "--train-images", str(image_dir), "--verify-steps", "2"]
        + ["--dedicated-dir", str(tmp / "warm-models")]  # --verify-init proxy is the default
    )
    inits = {json.loads(p.read_text())["init"] for p in (tmp / "warm-models").glob("*.json")}
    (cb,) = [p for p in (tmp / "warm-models").glob("checkerboard.proxy-*.json") if "identity" not in p.name]
    start = json.loads(cb.read_text())["start_bits_per_latent"]
    assert 0 < start < 10
    warm = [
        json.loads(p.read_text()) for p in (tmp / "warm-models").glob("*.json") if "identity" not in p.name
    ]
    assert warm and all(r["early_stop"]["every"] == 2 and "stopped_at" in r for r in warm)
    assert len(inits) == 1 and inits.pop().startswith("proxy:")
    # some rows have no dedicated model: the ranking stays on the proxy basis, dedicated rates apart
    assert len(have) >= 5 and len(have) < len(df) and (df["basis"] == "proxy").all()
    rc = json.loads((out / "manifest.json").read_text())["rank_correlation"]
    assert rc["n"] == len(df.dropna(subset=["dedicated_bits_per_latent", "proxy_bits_per_latent"]))
    expected = rank_correlations(df)  # the manifest holds the table's (CSV rounds to 6 digits)
    for got, want in ((rc, expected), (rc["orders_only"], expected["orders_only"])):
        flat = {k: v for k, v in want.items() if k != "orders_only"}
        assert {k: got[k] for k in flat} == pytest.approx(flat, rel=1e-4, nan_ok=True)
    assert rc["orders_only"]["n"] == rc["n"] - 3  # without the three baselines (all rated by the proxy)
    from orderopt import report

    assert report.main([str(out)]) == 0
    assert (out / "proxy_vs_dedicated.png").stat().st_size > 5000
    assert "trained from scratch, 2 steps each" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--patch", "0"], "at least 1"),
        (["--patch", "5", "--stages", "3"], "needs the whole cost table"),
        (["--table-fraction", "2"], "not a fraction of the decoded sets"),
        (["--model", "m.pt", "--quality", "1"], "not both"),
        (["--quality", "4"], "invalid choice"),
        (["--patch", "5", "--strategy", "dp"], "too large for --strategy dp"),
        (["--patch", "4", "--strategy", "exhaustive"], "too large"),
        (["--strategy", "zigzag"], "invalid choice"),
        (["--model", "/nonexistent.pt"], "does not exist"),
        (["--latents", "/nonexistent.pt"], "does not exist"),
        (
            ["--storage", "sqlite:////nonexistent/dir/x.db", "--strategy", "optuna"],
            "cannot open Optuna storage",
        ),
        (["--storage", "sqlite:///x.db"], "for --strategy optuna"),
        (["--device", "tpu"], "unknown device"),
        (["--mixture", "0"], "at least 1"),
        (["--proxy", "p.pt", "--mixture", "3"], "its own number of components"),
        (["--quality", "1", "--mixture", "3"], "no shipped proxy for patch 2 with 3 mixture"),
    ],
)
def test_cli_errors(args, message, tmp_path):
    r = run(*args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_latents_smaller_than_patch_and_foreign_proxy(setup, tmp_path):
    tmp, common, proxies = setup
    small = tmp_path / "small.npz"
    np.savez(small, y_hat=np.zeros((1, 12, 2, 3)), hyper=np.zeros((1, 24, 2, 3)), num_pixels=[1536])
    r = run("--patch", "3", "--latents", str(small), "--proxy", str(proxies[3]), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "smaller than the 3×3 patch" in r.stderr
    r = run("--patch", "3", *common, "--proxy", str(proxies[2]), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not an any-order proxy of patch 3" in r.stderr
    other = tmp_path / "other.npz"
    np.savez(other, y_hat=np.zeros((1, 5, 8, 8)), hyper=np.zeros((1, 10, 8, 8)), num_pixels=[16384])
    r = run("--patch", "2", "--latents", str(other), "--proxy", str(proxies[2]), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "another codec" in r.stderr


def test_optuna_with_dedicated_objective(setup, image_dir):
    tmp, common, proxies = setup
    out = tmp / "ded"
    assert (
        search.main(
            [
                "--patch",
                "2",
                "--strategy",
                "optuna",
                "--objective",
                "dedicated",
                "--trials",
                "2",
                *common,
                "--proxy",
                str(proxies[2]),
                "--out",
                str(out),
                "--train-images",
                str(image_dir),
                "--verify-steps",
                "2",
            ]
        )
        == 0
    )
    df = pd.read_csv(out / "candidates.csv")
    assert (df["source"].str.contains("optuna")).sum() >= 1
    r = run(
        "--patch",
        "2",
        "--strategy",
        "optuna",
        "--objective",
        "dedicated",
        *common,
        "--proxy",
        str(proxies[2]),
        "--out",
        str(tmp / "ded2"),
    )
    assert r.returncode == 2 and "--train-images" in r.stderr


def test_rank_correlations_golden():
    """Hand-computed: proxy ranks 1,2,3,4 against dedicated ranks 1,3,2,4 (one swapped pair):
    Spearman 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/60 = 0.8; Kendall (5 concordant − 1 discordant)/6 = 2/3.
    Without the baseline row (orders only): ranks 1,2,3 against 2,1,3: Spearman 0.5, Kendall 1/3."""
    df = pd.DataFrame(
        {
            "proxy_bits_per_latent": [1.0, 2.0, 3.0, 4.0, 5.0],
            "dedicated_bits_per_latent": [1.1, 3.1, 2.1, 4.1, np.nan],
            "source": ["baseline", "dp", "dp", "dp", "dp"],
        }
    )
    rc = rank_correlations(df)
    assert rc["n"] == 4 and rc["spearman"] == pytest.approx(0.8) and rc["kendall"] == pytest.approx(2 / 3)
    assert rc["orders_only"]["n"] == 3
    assert rc["orders_only"]["spearman"] == pytest.approx(0.5)
    assert rc["orders_only"]["kendall"] == pytest.approx(1 / 3)


def test_verify_curve_reuses_and_refuses_stored_dedicated_models(tmp_path):
    """A run asking for curves retrains models stored without one; a plain run reuses models
    stored with one; --verify-curve without --verify, or longer than the budget, is refused."""
    from .test_experiments import tiny_verify_args

    shared = tmp_path / "shared"
    common = [*tiny_verify_args(tmp_path, 2), "--dedicated-dir", shared]

    def records() -> dict:
        return {p.name: json.loads(p.read_text()) for p in shared.glob("*.json") if "identity" not in p.name}

    assert search.main(list(map(str, [*common, "--out", tmp_path / "plain"]))) == 0
    assert records() and all("held_out_curve" not in r for r in records().values())
    assert search.main(list(map(str, [*common, "--verify-curve", "1", "--out", tmp_path / "curve"]))) == 0
    curved = records()
    assert all([p["step"] for p in r["held_out_curve"]] == [1, 2] for r in curved.values())
    assert all(r["curve_every"] == 1 for r in curved.values())
    assert search.main(list(map(str, [*common, "--out", tmp_path / "plain2"]))) == 0
    assert records() == curved  # reused, not retrained
    manifest = json.loads((tmp_path / "plain2" / "manifest.json").read_text())
    assert all("held_out_curve" in d for d in manifest["dedicated"].values())
    no_verify = [str(a) for a in common[:6]] + ["--verify-curve", "1", "--out", str(tmp_path / "x")]
    r = run(*no_verify)
    assert r.returncode == 2 and "give --verify N as well" in r.stderr and "Traceback" not in r.stderr
    r = run(*map(str, [*common, "--verify-curve", "5", "--out", tmp_path / "y"]))
    assert r.returncode == 2 and "longer than --verify-steps 2" in r.stderr and "Traceback" not in r.stderr
    # early stopping changes the model: a run with it never reuses the fixed-budget models
    assert search.main(list(map(str, [*common, "--verify-early-stop", "1", "--out", tmp_path / "stop"]))) == 0
    manifest = json.loads((tmp_path / "stop" / "manifest.json").read_text())
    assert all("stop_curve" in d and "stopped_at" in d for d in manifest["dedicated"].values())
    stopped = [r for r in records().values() if r.get("early_stop")]
    assert len(stopped) == len(manifest["dedicated"]) and all(r["early_stop"]["every"] == 1 for r in stopped)
    assert search.main(list(map(str, [*common, "--out", tmp_path / "plain3"]))) == 0
    plain = json.loads((tmp_path / "plain3" / "manifest.json").read_text())["dedicated"]
    assert all("stop_curve" not in d for d in plain.values())  # the fixed-budget models, not these
    r = run(*map(str, [*common, "--verify-curve", "1", "--verify-early-stop", "1", "--out", tmp_path / "z"]))
    assert r.returncode == 2 and "give one" in r.stderr and "Traceback" not in r.stderr
    r = run(*map(str, [*common, "--verify-early-stop", "3", "--out", tmp_path / "w"]))
    assert r.returncode == 2 and "longer than --verify-steps 2" in r.stderr and "Traceback" not in r.stderr


def test_dedicated_models_stop_early_by_default():
    """Without --verify-early-stop, dedicated models stop early every DEFAULT_STOP_EVERY steps (or
    at the end of a shorter budget); a --verify-curve, or no dedicated model at all, means 0, so the
    settings of runs without --verify (and their reuse) do not change."""
    from orderopt.verify import DEFAULT_STOP_EVERY, default_early_stop

    assert default_early_stop(True, 0, 2000) == DEFAULT_STOP_EVERY
    assert default_early_stop(True, 0, 50) == 50
    assert default_early_stop(True, 250, 2000) == 0 and default_early_stop(False, 0, 2000) == 0
    parse = search.build_parser().parse_args
    plain = parse(["--patch", "2"])
    search.check_arguments(plain)
    assert plain.verify_early_stop == 0
    assert settings_key(plain) == settings_key(SimpleNamespace(**{**vars(plain), "verify_early_stop": None}))
    verified = parse(["--patch", "2", "--verify", "1"])
    search.check_arguments(verified)
    assert verified.verify_early_stop == DEFAULT_STOP_EVERY
