"""Search decoding orders: ``python -m orderopt.search --patch K``.

By default on the shipped model and the embedded photographs (held out: never trained on).
Writes a run directory with

- ``candidates.csv``: one row per candidate order and baseline, best first, every row ranked
  on one rate basis, gains with 95% paired-bootstrap intervals over the images (schema:
  :mod:`orderopt.results`). Baseline rows have ``order`` = ``hyperprior``, ``checkerboard``
  or ``autoregressive`` and the order they stand for in ``symmetry_class``.
- ``frontier.csv`` (k ≤ 4, when the whole cost table is known): for every stage budget
  T = 1 … k², the best schedule with at most T stages (:func:`orderopt.strategies.frontier`).
  ``--stages T`` also adds the best schedule within T stages to the candidates and prints it.
- ``costs.npz``: every row of the cost table c(S, q) the run computed exactly
  (:class:`orderopt.costs.CostTable`). For k = 4 the DP and the frontier run by default on a
  settled surrogate of a sixteenth of the table (``--table-fraction``, :mod:`orderopt.tables`),
  so that every rate in the files is still exact; ``--table-fraction 1`` computes it all.
- ``manifest.json``: arguments, model hash, images, seeds, package versions, device,
  timings; with ``--verify``: ``rank_correlation`` (Spearman and Kendall of proxy against
  dedicated rates) and ``dedicated`` (each model's rate, per-image bpp, budget, time).

``--verify`` trains dedicated models (:mod:`orderopt.verify`). A finished run with the same
settings is reused unless ``--force``; an interrupted one resumes (the cost table and each
dedicated model are saved as they are computed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import orders as od
from . import strategies
from .costs import CostTable, ProxyOracle
from .devices import add_device_option, device_name, torch_device
from .errors import HelpFormatter, OneLineErrorParser, UserError, number, run_cli
from .files import check_writable, write_json
from .fit import load_proxy, measure, shipped_proxy
from .latents import LatentSet, held_out_latents
from .model import add_model_options, check_model_options
from .results import (
    Bootstrap,
    candidate_rows,
    changed_inputs,
    dedicated_summary,
    finished_run,
    frontier_table,
    latent_summary,
    print_table,
    rank_correlations,
    settings_key,
    versions,
    write_csv,
)
from .tables import default_fraction, fill_resumably, open_table, scored_sets, settled_surrogate
from .verify import add_options as add_verify_options
from .verify import dedicated_objective, default_early_stop, shipped_autoregressive, verify

STRATEGIES = ("auto", *strategies.REGISTRY)


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
    p.add_argument(
        "--mixture",
        type=number(at_least=1),
        default=1,
        help="Gaussian-mixture components of the shipped proxy (1, or 3 where one is shipped: quality 2); "
        "--proxy takes its own",
    )
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
    add_verify_options(p)
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


def check_arguments(args) -> str:
    """Fail early, in one line, on arguments that do not go together; returns the strategy."""
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
    if args.proxy and args.mixture != 1:
        raise UserError(
            "--mixture picks a shipped proxy; a --proxy checkpoint has its own number of components"
        )
    if args.verify_curve and not args.verify:
        raise UserError("--verify-curve measures dedicated models: give --verify N as well")
    dedicated = bool(args.verify) or args.objective == "dedicated"
    if args.verify_early_stop and not dedicated:
        raise UserError("--verify-early-stop stops dedicated models: give --verify N as well")
    if args.verify_curve and args.verify_early_stop:
        raise UserError(
            "--verify-curve and --verify-early-stop each measure a curve during training; give one"
        )
    for option, every in (
        ("--verify-curve", args.verify_curve),
        ("--verify-early-stop", args.verify_early_stop),
    ):
        if every and every > args.verify_steps:
            raise UserError(
                f"{option} {every} is longer than --verify-steps {args.verify_steps}: "
                "no measurement would fall within the budget; give a smaller interval"
            )
    if args.verify_early_stop is None:  # resolved here, so the manifest records what ran
        args.verify_early_stop = default_early_stop(dedicated, args.verify_curve, args.verify_steps)
    if (args.storage or args.study) and strategy != "optuna":
        raise UserError("--storage and --study are for --strategy optuna")
    if args.storage:
        check_storage(args.storage)
    return strategy


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    strategy = check_arguments(args)
    device = torch_device(args.device)
    out = Path(args.out or f"runs/patch{args.patch}-{strategy}")
    key = settings_key(args)
    finished = None if args.force else finished_run(out, key)
    # the folder itself is made by the first write, after the checks (a finished run's own
    # check waits for its inputs: it is reused when they are the same)
    if finished is None:
        check_writable(out / "manifest.json")
    if not args.proxy:
        shipped_proxy(args.patch, args.quality, args.mixture)  # before the latents are computed
    t0 = time.time()
    lat, inputs = held_out_latents(args.latents, args.model, args.quality, args.images, args.cache_dir)
    h, w = lat.min_size
    if h < args.patch or w < args.patch:
        raise UserError(f"latents of {h}×{w} are smaller than the {args.patch}×{args.patch} patch")
    proxy, proxy_meta = load_proxy(args.proxy, args.patch, args.quality, lat, args.mixture)
    ar = shipped_autoregressive(lat.model_hash, args.quality)
    identity = {
        "model_hash": lat.model_hash,
        "images_hash": lat.images_hash,
        "proxy_hash": proxy_meta["hash"],
        "autoregressive_hash": ar[1]["hash"] if ar else None,
    }
    if finished is not None:
        changed = changed_inputs(finished[1], identity)
        if not changed:
            print(f"reusing the finished run in {out} (--force to recompute)")
            print_table(finished[0])
            return 0
        names = ", ".join(c.removesuffix("_hash").replace("_", " ") for c in changed)
        print(
            f"the finished run in {out} rated other inputs ({names} changed): recomputing it", file=sys.stderr
        )
        check_writable(out / "manifest.json")
    costs_path = out / "costs.npz"
    meta = {"model_hash": lat.model_hash, "images_hash": lat.images_hash, "proxy_hash": proxy_meta["hash"]}
    table = open_table(ProxyOracle(proxy, lat, device=device), meta, args.patch, costs_path, args.force)
    search_table, table_info = table, {}
    fraction = args.table_fraction if args.table_fraction is not None else default_fraction(args.patch)
    if fraction < 1 and args.patch <= 4 and (strategies.REGISTRY[strategy].full_table or args.stages):
        search_table, table_info = settled_surrogate(table, costs_path, fraction, args.seed)
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
    # each image's share (for the intervals) of every subset an order to score uses: one batched pass
    table.fill_images(scored_sets(args.patch, found))
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
    if ar is not None and "autoregressive" not in dedicated:
        dedicated["autoregressive"] = measure(ar[0], lat)
    boot = Bootstrap(resamples=args.bootstrap, seed=args.seed)
    df = candidate_rows(args.patch, table, found, lat, dedicated, boot)
    write_csv(df, out / "candidates.csv")
    if schedules is not None:
        write_csv(frontier_table(args.patch, table, schedules), out / "frontier.csv")
    table.save(costs_path)
    manifest = {
        "status": "complete",
        "settings_key": key,
        "arguments": vars(args),
        **inputs,
        "identity": identity,
        "proxy": proxy_meta,
        "latents": latent_summary(lat, table),
        "seeds": {"search": args.seed, "verify": args.seed, "bootstrap": args.seed},
        "bootstrap": boot.as_dict(),
        "device": device_name(device),
        "versions": versions(),
        "timings_s": {
            **{k: v for k, v in info.items() if k.endswith("_s")},
            "total_s": round(time.time() - t0, 2),
        },
        "strategy": info,
        "rank_correlation": rank_correlations(df),
        "dedicated": dedicated_summary(dedicated),
        "command": " ".join(["python -m orderopt.search", *(argv or sys.argv[1:])]),
    }
    write_json(manifest, out / "manifest.json")
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
