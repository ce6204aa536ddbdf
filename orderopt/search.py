"""Search decoding orders: ``python -m orderopt.search --patch K``.

By default on the shipped model and the embedded photographs (held out: never trained on).
Writes a run directory with

- ``candidates.csv``: one row per candidate order and baseline, best first; columns
  ``rank, order, stages, symmetry_class, source, basis, proxy_bits_per_latent,
  dedicated_bits_per_latent, bpp, gain_vs_checkerboard_pct, gain_vs_checkerboard_ci_low,
  gain_vs_checkerboard_ci_high, gain_vs_autoregressive_pct, gain_vs_autoregressive_ci_low,
  gain_vs_autoregressive_ci_high, distinguishable_from_best`` (:mod:`orderopt.results`).
  Baseline rows have ``order`` = ``hyperprior``, ``checkerboard`` or ``autoregressive`` and
  the order they stand for in ``symmetry_class``. Every row is ranked on one ``basis``:
  the proxy's rates (which include autoregressive when the proxy was trained with the raster
  context), or dedicated rates when every row has one. Gains are (R − R_base)/R_base in
  percent (negative is better), with 95% paired-bootstrap intervals over the images.
- ``frontier.csv`` (k ≤ 4, when the whole cost table is known): for every stage budget
  T = 1 … k², the best schedule with at most T stages; columns ``stages, order,
  proxy_bits_per_latent, bpp, gain_vs_checkerboard_pct, gain_vs_autoregressive_pct`` (proxy
  rates; :func:`orderopt.strategies.frontier`). ``--stages T`` also adds the best schedule
  within T stages to the candidates (source ``frontier``) and prints it.
- ``costs.npz``: the cost table c(S, q) (see :class:`orderopt.costs.CostTable`): every row
  the run computed exactly. For k = 4 the DP and the frontier run by default on a surrogate
  (``--table-fraction``, :mod:`orderopt.surrogate`): a sixteenth of the 2^16 decoded sets
  computed, the rest fitted, and every schedule they pick, with every decoded set on a full
  order within :data:`orderopt.surrogate.MARGIN` of the best, computed exactly until the picks
  settle, so that every rate in the files is exact; ``--table-fraction 1`` computes them all.
- ``manifest.json``: arguments, model hash, images, seeds, package versions, device,
  timings; with ``--verify``: ``rank_correlation`` (Spearman and Kendall of proxy against
  dedicated rates over every verified row, and ``orders_only`` without the baselines) and
  ``dedicated`` (each model's rate, per-image bpp, budget and training time).

``--verify`` trains the dedicated models either from scratch or, with ``--verify-init
proxy``, fine-tuned from the proxy's weights restricted to each order's masks (the model then
starts at the proxy's rate for its order, so a short budget measures what specialising to the
order gains rather than how fast each architecture converges).

A finished run with the same settings is reused unless ``--force``; an interrupted one
resumes (the cost table and each dedicated model are saved as they are computed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import data, strategies, surrogate
from . import orders as od
from .costs import CostTable, ProxyOracle, bitmask
from .devices import add_device_option, device_name, torch_device
from .errors import HelpFormatter, OneLineErrorParser, UserError, number, run_cli
from .files import check_writable, write_json
from .fit import load_context
from .latents import LatentSet, cached_latents, load_latents
from .model import DEFAULT_QUALITY, add_model_options, check_model_options, load_model, shipped_weights
from .results import (
    Bootstrap,
    baseline_orders,
    candidate_rows,
    frontier_table,
    print_table,
    rank_correlations,
    write_csv,
)
from .verify import dedicated_objective, shipped_autoregressive, verify

STRATEGIES = ("auto", *strategies.REGISTRY)
PROBE_SUBSETS = 32  # decoded sets timed before a full cost table is filled
SURROGATE_FRACTION = 1 / 16  # of the 4×4 decoded sets, computed exactly (results/bench_cost_table.md)
LONG_FILL_S = 600.0  # a fill estimated longer than this is announced, with the faster choices


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orderopt.search",
        description="Search the decoding orders of a K×K patch and score them with the baselines (see the "
        "module documentation for the output files).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--patch", type=number(at_least=1), default=2, help="patch size k (k² stages)")
    p.add_argument(
        "--stages",
        type=number(at_least=1),
        help="also find the best schedule with at most this many stages (several positions per "
        "stage; exact, k ≤ 4, needs the whole cost table)",
    )
    p.add_argument(
        "--table-fraction",
        type=number(float, above=0),
        help="where the whole cost table is needed (dp, exhaustive, frontier, --stages): the fraction of "
        "its 2^(k²) decoded sets computed exactly; the rest is fitted (orderopt.surrogate) and every "
        "schedule picked is computed exactly until the picks settle (default: 1 for k ≤ 3, 1/16 for "
        "k = 4; results/bench_cost_table.md measures what it costs)",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="auto: exhaustive for k ≤ 2, dp for k ≤ 4, greedy beyond",
    )
    add_model_options(p)
    p.add_argument("--images", help="held-out image folder (default: the embedded photographs)")
    p.add_argument("--latents", help="held-out latent file (.pt or .npz) instead of --model/--images")
    p.add_argument("--proxy", help="any-order proxy checkpoint for --patch (default: the shipped one)")
    p.add_argument("--out", help="run directory (default: runs/patch<k>-<strategy>)")
    p.add_argument("--force", action="store_true", help="recompute a finished run")
    p.add_argument("--trials", type=number(at_least=1), default=200, help="Optuna trials (this worker)")
    p.add_argument(
        "--objective",
        choices=["proxy", "dedicated"],
        default="proxy",
        help="Optuna objective: proxy rate, or a dedicated model trained per trial (slow)",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage shared by workers started at any time: journal:FILE (a journal file, no "
        "server needed) or a database URL such as sqlite:///study.db",
    )
    p.add_argument("--study", help="Optuna study name (with --storage)")
    p.add_argument(
        "--top",
        type=number(at_least=1),
        default=20,
        help="best Optuna orders kept as candidates (besides the published orders)",
    )
    p.add_argument(
        "--random",
        type=number(at_least=0),
        default=0,
        help="also score this many random orders (distribution)",
    )
    p.add_argument(
        "--verify",
        type=number(at_least=0),
        default=0,
        help="train dedicated models for the N best candidates, the published orders, the worst "
        "candidate and every baseline, and rank-correlate their rates with the proxy",
    )
    p.add_argument("--train-images", help="training image folder for --verify / dedicated objective")
    p.add_argument("--train-latents", help="training latent file instead of --train-images")
    p.add_argument(
        "--verify-steps", type=number(at_least=1), default=2000, help="training steps of each dedicated model"
    )
    p.add_argument(
        "--verify-init",
        choices=["proxy", "scratch"],
        default="proxy",
        help="start dedicated models from the proxy's weights restricted to their masks (a short "
        "budget measures what specialising to the order gains), or from random weights (needs "
        "budgets far beyond a CPU's to converge; results/ shows both)",
    )
    p.add_argument(
        "--verify-lr",
        type=number(float, above=0),
        help="learning rate of dedicated models (default: 1e-3 from scratch, 1e-4 from the proxy)",
    )
    p.add_argument(
        "--jobs",
        type=number(at_least=1),
        default=1,
        help="dedicated models trained at once, one process and CPU thread each",
    )
    p.add_argument(
        "--dedicated-dir",
        help="folder of dedicated models and results, shareable between runs (default: RUN_DIR/dedicated)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of Optuna, random orders and dedicated training")
    p.add_argument(
        "--bootstrap",
        type=number(at_least=100),
        default=2000,
        help="resamples of the images for the 95%% intervals of every gain (seeded with --seed)",
    )
    add_device_option(p, what=" for the cost table and the --verify training")
    p.add_argument("--cache-dir", help="latent cache folder (default: $ORDEROPT_CACHE or ~/.cache/orderopt)")
    return p


# --- inputs -------------------------------------------------------------------------------
def held_out_latents(args) -> tuple[LatentSet, dict]:
    if args.latents:
        lat = load_latents(args.latents)
        return lat, {"latents": str(args.latents), "model_hash": lat.model_hash}
    model, meta = load_model(args.model, args.quality)
    images = data.load_images(args.images)
    lat, path = cached_latents(model, meta["hash"], images, args.cache_dir)
    return lat, {
        "model": str(args.model or f"shipped q{args.quality or DEFAULT_QUALITY}"),
        "model_hash": meta["hash"],
        "images": args.images or data.EMBEDDED_NAME,
        "image_names": lat.names,
        "latent_cache": str(path),
    }


def find_proxy(args, lat: LatentSet):
    if args.proxy:
        proxy, meta = load_context(args.proxy)
    else:
        path = shipped_weights(f"proxy_k{args.patch}", args.quality)
        if not path.is_file():
            raise UserError(
                f"no shipped proxy for patch {args.patch}; train one with `python -m orderopt.train context "
                f"--proxy --patch {args.patch} --train-images DIR --out P.pt` and pass --proxy P.pt"
            )
        proxy, meta = load_context(path)
        if meta.get("model_hash") != lat.model_hash:
            raise UserError(
                f"the shipped proxy belongs to the shipped model, not to model {lat.model_hash}; train a "
                f"proxy for your model (`python -m orderopt.train context --proxy --patch {args.patch} ...`) "
                "and pass --proxy"
            )
    if meta.get("kind") != "anyorder" or int(meta.get("patch", -1)) != args.patch:
        raise UserError(
            f"{args.proxy} is a {meta.get('kind')} model, not an any-order proxy of patch {args.patch}"
        )
    if (meta["latent_channels"], meta["hyper_channels"]) != (lat.latent_channels, lat.hyper_channels):
        raise UserError("the proxy was trained on latents of another codec (channel counts differ)")
    return proxy, meta


def fill_resumably(
    table: CostTable,
    path: Path,
    batch: int | None = None,
    save_every_s: float = 30.0,
    subsets: list[int] | None = None,
) -> None:
    """Fill the whole table (or the rows of ``subsets``) ``batch`` subsets at a time (default:
    what suits the oracle's device), saving at least every ``save_every_s`` seconds and at the
    end, so that an interrupted run resumes and loses at most that much work. (Saving after
    every chunk costs half a second each: on a GPU, most of the time.)"""
    batch = batch or getattr(table.oracle, "subsets_per_call", 512)
    known = np.asarray(table.known, dtype=bool)
    todo = np.flatnonzero(~known) if subsets is None else np.array([s for s in subsets if not known[s]], int)
    if len(todo) > 4 * PROBE_SUBSETS:  # time a few subsets first: say so before a long fill
        t0 = time.perf_counter()
        table.fill(todo[:PROBE_SUBSETS].tolist(), batch=PROBE_SUBSETS)
        estimate = (time.perf_counter() - t0) / PROBE_SUBSETS * len(todo)
        todo = todo[PROBE_SUBSETS:]
        if estimate > LONG_FILL_S:
            print(
                f"note: the whole {table.patch}×{table.patch} cost table ({len(todo) + PROBE_SUBSETS} "
                f"decoded sets) will take about {estimate / 60:.0f} min on this device; a smaller "
                f"--table-fraction (default {SURROGATE_FRACTION:g} for k = 4) or --strategy greedy computes "
                "a few thousand sets instead, and a GPU (--device cuda) fills the table in seconds. "
                "Interrupting loses nothing: the same command resumes.",
                file=sys.stderr,
            )
    saved = time.perf_counter()
    for start in tqdm(
        range(0, len(todo), batch),
        desc=f"cost table {table.patch}×{table.patch}",
        unit="chunk",
        disable=len(todo) <= batch,
    ):
        table.fill(todo[start : start + batch].tolist(), batch=batch)
        if time.perf_counter() - saved >= save_every_s or start + batch >= len(todo):
            table.save(path)
            saved = time.perf_counter()


def table_fraction(args) -> float:
    """The fraction of the decoded sets computed exactly where the whole table is needed."""
    if args.table_fraction is not None:
        return args.table_fraction
    return SURROGATE_FRACTION if args.patch == 4 else 1.0


def settled_surrogate(args, table: CostTable, costs_path: Path, fraction: float) -> tuple[CostTable, dict]:
    """The complete surrogate of ``table`` (a fraction of its sets computed, the rest fitted),
    after computing exactly every schedule the DP and the frontier pick on it."""
    t0 = time.time()
    fill_resumably(table, costs_path, subsets=surrogate.anchor_sets(args.patch, fraction, args.seed))

    def pick(t: CostTable) -> list[od.DecodingOrder]:
        return [strategies.dp(t)[0], *(o for _, o, _ in strategies.frontier(t))]

    def fill(sets: list[int]) -> None:
        table.fill(sets)
        table.save(costs_path)

    approx, _, rounds = surrogate.settle(table, pick, fill, margin=surrogate.MARGIN)
    return approx, {
        "table_fraction": fraction,
        "sets_computed": int(np.sum(np.asarray(table.known, dtype=bool))),
        "settle_rounds": rounds,
        "surrogate_degree": surrogate.DEGREE,
        "surrogate_margin": surrogate.MARGIN,
        "table_s": round(time.time() - t0, 2),
    }


def run_strategy(
    args, name: str, table: CostTable, costs_path: Path, lat: LatentSet
) -> tuple[dict[od.DecodingOrder, str], dict]:
    """Candidate orders with their source, and timing/extra info of the strategy. ``table`` is
    the exact table, saved to ``costs_path``, or a complete surrogate (never saved)."""
    strategy = strategies.REGISTRY[name]
    t0 = time.time()
    context = strategies.SearchContext(
        table,
        objective=dedicated_objective(args, lat)
        if args.objective == "dedicated" and name == "optuna"
        else table.rate,
        fill_table=lambda: fill_resumably(table, costs_path),
        options={
            "trials": args.trials,
            "seed": args.seed,
            "storage": args.storage,
            "study": args.study,
            "top": args.top,
            "progress": True,
        },
    )
    result = strategy.search(context)
    info = {"strategy": name, **result.info, "search_s": round(time.time() - t0, 2)}
    if table.oracle is not None:
        table.save(costs_path)
    return result.found, info


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "scipy", "optuna", "pandas", "orderopt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def settings_key(args) -> str:
    keys = (
        "patch",
        "strategy",
        "model",
        "images",
        "latents",
        "proxy",
        "trials",
        "objective",
        "top",
        "random",
        "verify",
        "verify_steps",
        "verify_init",
        "verify_lr",
        "seed",
        "bootstrap",
        "train_images",
        "train_latents",
        "quality",
        "stages",
        "table_fraction",
    )
    blob = json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_model_options(args)
    strategy = args.strategy if args.strategy != "auto" else strategies.auto_strategy(args.patch)
    largest = strategies.REGISTRY[strategy].max_patch
    if args.patch > largest:
        raise UserError(f"patch {args.patch} is too large for --strategy {strategy} (at most {largest})")
    if args.stages and args.patch > 4:
        raise UserError(
            f"--stages needs the whole cost table, 2^{args.patch**2} rows for patch {args.patch}; use k ≤ 4"
        )
    if args.table_fraction is not None and args.table_fraction > 1:
        raise UserError(
            f"--table-fraction {args.table_fraction:g} is not a fraction of the decoded sets; "
            "give one in (0, 1]"
        )
    if (args.storage or args.study) and strategy != "optuna":
        raise UserError("--storage and --study are for --strategy optuna")
    if args.storage:
        check_storage(args.storage)
    device = torch_device(args.device)
    out = Path(args.out or f"runs/patch{args.patch}-{strategy}")
    manifest_path = out / "manifest.json"
    key = settings_key(args)
    if manifest_path.is_file() and not args.force:
        try:
            m = json.loads(manifest_path.read_text())
            finished = m.get("status") == "complete" and m.get("settings_key") == key
            if finished:
                df = pd.read_csv(out / "candidates.csv")
        except (ValueError, AttributeError, OSError, pd.errors.ParserError) as err:
            raise UserError(f"run files in {out} are damaged ({err}); pass --force to recompute") from None
        if finished:
            print(f"reusing the finished run in {out} (--force to recompute)")
            print_table(df)
            return 0
    check_writable(manifest_path)  # the folder itself is made by the first write, after the checks
    t0 = time.time()
    lat, inputs = held_out_latents(args)
    h, w = lat.min_size
    if h < args.patch or w < args.patch:
        raise UserError(f"latents of {h}×{w} are smaller than the {args.patch}×{args.patch} patch")
    proxy, proxy_meta = find_proxy(args, lat)
    costs_path = out / "costs.npz"
    oracle = ProxyOracle(proxy, lat, device=device)
    meta = {"model_hash": lat.model_hash, "images_hash": lat.images_hash, "proxy_hash": proxy_meta["hash"]}
    table = None
    if costs_path.is_file() and not args.force:
        try:
            old = CostTable.load(costs_path, oracle=oracle)
        except ValueError as err:
            raise UserError(f"{err}; pass --force to recompute it") from None
        if old.meta == meta and old.patch == args.patch:
            table = old
    table = table or CostTable.from_oracle(oracle, meta=meta)
    table.autosave(costs_path)  # greedy and Optuna fill it lazily: an interrupted run resumes
    search_table, table_info = table, {}
    fraction = table_fraction(args)
    if fraction < 1 and args.patch <= 4 and (strategies.REGISTRY[strategy].full_table or args.stages):
        search_table, table_info = settled_surrogate(args, table, costs_path, fraction)
    found, info = run_strategy(args, strategy, search_table, costs_path, lat)
    info.update(table_info)
    schedules = None
    if args.patch <= 4 and (args.stages or search_table.complete):
        fill_resumably(search_table, costs_path)
        t1 = time.time()
        schedules = strategies.frontier(search_table)  # picks of a surrogate are exact (settled)
        info["frontier_s"] = round(time.time() - t1, 3)
        if args.stages:
            found.setdefault(schedules[min(args.stages, args.patch**2) - 1][1], "frontier")
    if args.random:
        rng = np.random.default_rng(args.seed)
        for _ in range(args.random):
            found.setdefault(od.random_order(args.patch, int(rng.integers(2**31))), "random")
    needed = {
        bitmask(sd, args.patch)
        for o in [
            *found,
            *od.published_orders(args.patch).values(),
            *filter(None, baseline_orders(args.patch).values()),
        ]
        for sd, _ in o.schedule()
    }
    # each image's share (for the intervals) of every subset an order to score uses, and so its
    # total: one batched pass
    table.fill_images(needed)
    if float(proxy_meta.get("raster_fraction", 0)) > 0:  # the proxy also rates autoregressive
        table.fill_raster()
    else:
        print(
            "note: this proxy was not trained with the raster context, so it cannot rate autoregressive "
            "(no gain against it); train one with `train context --proxy --raster-fraction 0.25`",
            file=sys.stderr,
        )
    table.save(costs_path)
    held_out_path = str(args.latents or inputs["latent_cache"])
    dedicated = verify(args, found, table, lat, held_out_path, out, device) if args.verify else {}
    ded_ar = shipped_autoregressive(lat, args.quality)
    if ded_ar is not None and "autoregressive" not in dedicated:
        dedicated["autoregressive"] = ded_ar
    boot = Bootstrap(resamples=args.bootstrap, seed=args.seed)
    df = candidate_rows(args.patch, table, found, lat, dedicated, boot)
    write_csv(df, out / "candidates.csv")
    if schedules is not None:
        write_csv(frontier_table(args.patch, table, schedules), out / "frontier.csv")
    table.save(costs_path)
    correlations = rank_correlations(df)
    manifest = {
        "status": "complete",
        "settings_key": key,
        "arguments": vars(args),
        **inputs,
        "proxy": proxy_meta,
        "latents": {
            "images": len(lat),
            "elements": table.num_elements,
            "pixels": table.num_pixels,
            "latent_channels": lat.latent_channels,
            "mean_height": float(np.mean([e.y_hat.shape[1] for e in lat.entries])),
            "mean_width": float(np.mean([e.y_hat.shape[2] for e in lat.entries])),
        },
        "seeds": {"search": args.seed, "verify": args.seed, "bootstrap": args.seed},
        "bootstrap": boot.as_dict(),
        "device": device_name(device),
        "versions": versions(),
        "timings_s": {
            **{k: v for k, v in info.items() if k.endswith("_s")},
            "total_s": round(time.time() - t0, 2),
        },
        "strategy": info,
        "rank_correlation": correlations,
        "dedicated": {
            name: {
                k: rec[k]
                for k in (
                    "bits_per_latent",
                    "start_bits_per_latent",
                    "bpp",
                    "images",
                    "config",
                    "train_s",
                    "init",
                    "device",
                )
                if k in rec
            }
            for name, rec in dedicated.items()
        },
        "command": " ".join(["python -m orderopt.search", *(argv or sys.argv[1:])]),
    }
    write_json(manifest, manifest_path)
    print_table(df)
    if args.stages and schedules is not None:
        t, order, bits = schedules[min(args.stages, args.patch**2) - 1]
        print(
            f"\nbest schedule within {args.stages} stages: {order} ({order.num_stages} stages, "
            f"{bits / table.num_elements:.4f} bits per latent, {table.bpp(order):.4f} bpp)"
        )
    print(f"\n{len(df)} rows -> {out / 'candidates.csv'} ({manifest['timings_s']['total_s']:.1f} s)")
    return 0


def check_storage(url: str) -> None:
    """Fail early, in one line, on a storage URL Optuna cannot open."""
    try:
        strategies.open_storage(url)
    except Exception as err:
        raise UserError(f"cannot open Optuna storage {url!r}: {str(err).splitlines()[0][:200]}") from None


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
