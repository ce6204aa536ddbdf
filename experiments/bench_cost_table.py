"""How well does the 4×4 search do on a surrogate of the cost table, and how fast is it?

The exact 4×4 table sums, for each of 2^16 decoded sets S and each undecoded in-patch
position q, the bits of every latent position ("row") of the held-out latents: on a 2-core
CPU that is half an hour. The search instead computes a fraction of the sets exactly, fits
the rest (``orderopt.surrogate``) and computes exactly what it picks until the picks settle.
This measures, against the exact float32 table:

1. The row-level bits R[S, q, row] of the exact table, cached per q in ``--cache`` (resumable).
2. Surrogates at several fractions of the sets and seeds, settled as the search settles them
   (with its margin): sets computed, rounds, whether the DP optimum is the exact one, and the
   regret of the DP optimum and of every frontier schedule (exact rate of the pick / exact best
   with as many stages − 1).
3. The alternative it replaced, for the record: a table of a fraction of the *rows* (latent
   positions, weighted), which is as fast but far noisier.
4. The exact table's throughput on this machine (sets per second on a probe), from which
   the full table's time and each surrogate's fill time follow.

Writes results/bench_cost_table.{json,md}; ``--save-table`` also writes the exact table as a
cost-table file that ``search --patch 4 --table-fraction 1 --out DIR`` resumes from
(DIR/costs.npz).

    python experiments/bench_cost_table.py [--quality 2]
    python experiments/bench_cost_table.py --model CKPT --proxy PROXY [--images DIR]  # another model
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from outputs import save_results
from tqdm import tqdm

from orderopt import data, strategies, surrogate
from orderopt.costs import CostTable, ProxyOracle
from orderopt.fit import load_context
from orderopt.latents import cached_latents
from orderopt.model import DEFAULT_QUALITY, QUALITIES, load_model, shipped_weights


def rows_per_image(lat, k: int, q: int) -> list[int]:
    """Latent positions at in-patch position q in each image (the oracle's row layout)."""
    r, c = divmod(q, k)
    return [len(range(r, e.y_hat.shape[1], k)) * len(range(c, e.y_hat.shape[2], k)) for e in lat.entries]


def row_level(oracle: ProxyOracle, cache: Path, chunk: int = 512) -> list[np.ndarray]:
    """R[q]: (2^{k²−1}, P_q) float32 bits of the sets without q (in increasing order)."""
    k2 = oracle.patch**2
    cache.mkdir(parents=True, exist_ok=True)
    blocks = []
    for q in tqdm(range(k2), desc="row-level table", unit="position"):
        path = cache / f"rows_q{q}.npy"
        if not path.is_file():
            sets = [s for s in range(1 << k2) if not (s >> q) & 1]
            block = np.concatenate(
                [oracle.row_bits(sets[i : i + chunk], q).numpy() for i in range(0, len(sets), chunk)]
            )
            np.save(path.with_suffix(".tmp.npy"), block)
            path.with_suffix(".tmp.npy").rename(path)
        blocks.append(np.load(path, mmap_mode="r"))
    return blocks


def sample_rows(sizes: list[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified draw of a fraction of every image's rows and the weight of each row (rows
    of its image per row kept): the row-sampling alternative."""
    rng = np.random.default_rng(seed)
    kept, weight, start = [], np.ones(sum(sizes)), 0
    for n in sizes:
        m = max(1, round(fraction * n))
        kept.append(start + np.sort(rng.permutation(n)[:m]))
        weight[start : start + n] = n / m
        start += n
    return np.concatenate(kept), weight


def table_from_rows(blocks, sizes, k: int, fraction: float = 1.0, seed: int = 0) -> np.ndarray:
    """The cost table from the row-level bits: all rows, or a weighted draw of a fraction."""
    k2 = k * k
    table = np.full((1 << k2, k2), np.nan)
    for q in range(k2):
        sets = np.array([s for s in range(1 << k2) if not (s >> q) & 1])
        if fraction >= 1:
            table[sets, q] = np.asarray(blocks[q], dtype=np.float64).sum(1)
        else:
            idx, weight = sample_rows(sizes[q], fraction, seed * k2 + q)
            table[sets, q] = np.asarray(blocks[q][:, idx], dtype=np.float64) @ weight[idx]
    return table


def picks_regret(ref: CostTable, best_bits: float, best_front, order, front: list) -> dict:
    """How far the picks on an approximate table (its DP optimum, its frontier's schedules)
    are from the exact optima, in percent."""
    regret = [100 * (ref.rate(o) / b - 1) for o, (_, _, b) in zip(front, best_front, strict=True)]
    return {
        "dp_order": str(order),
        "dp_regret_pct": 100 * (ref.rate(order) / best_bits - 1),
        "frontier_regret_pct": regret,
        "frontier_same": sum(o == b for o, (_, b, _) in zip(front, best_front, strict=True)),
    }


def summary(runs: list[dict], best_order: str) -> dict:
    return {
        "runs": runs,
        "dp_same": sum(r["dp_order"] == best_order for r in runs),
        "max_dp_regret_pct": max(r["dp_regret_pct"] for r in runs),
        "max_frontier_regret_pct": max(max(r["frontier_regret_pct"]) for r in runs),
        "min_frontier_same": min(r["frontier_same"] for r in runs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quality", type=int, choices=QUALITIES, default=DEFAULT_QUALITY, help="shipped quality")
    p.add_argument("--patch", type=int, default=4, help="patch size (default: 4)")
    p.add_argument(
        "--fractions", type=float, nargs="+", default=[1 / 64, 1 / 32, 1 / 16, 1 / 8], help="set fractions"
    )
    p.add_argument("--row-fractions", type=float, nargs="+", default=[1 / 2, 1 / 8], help="row fractions")
    p.add_argument("--seeds", type=int, default=6, help="draws per fraction (seeds 0 … N−1)")
    p.add_argument("--probe", type=int, default=1024, help="random sets timed for the exact throughput")
    p.add_argument("--cache", default="/tmp/orderopt-row-level", help="folder of the row-level blocks")
    p.add_argument("--save-table", help="also write the exact table as a cost-table .npz here")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--model", help="base-model checkpoint (default: the shipped model of --quality)")
    p.add_argument("--proxy", help="any-order proxy of --patch (default: the shipped one of --quality)")
    p.add_argument("--images", help="held-out image folder (default: the embedded photographs)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    k, k2 = args.patch, args.patch**2
    model, meta = load_model(args.model, None if args.model else args.quality)
    lat, _ = cached_latents(model, meta["hash"], data.load_images(args.images))
    proxy, proxy_meta = load_context(args.proxy or shipped_weights(f"proxy_k{k}", args.quality))
    oracle = ProxyOracle(proxy, lat)
    sizes = [rows_per_image(lat, k, q) for q in range(k2)]
    shipped = not (args.model or args.proxy)  # the shipped pair of --quality
    key = f"{meta['hash']}-{proxy_meta['hash']}"  # by weights, not by name: shipped weights change
    blocks = row_level(oracle, Path(args.cache) / f"{key}-k{k}-{lat.images_hash}")
    exact = table_from_rows(blocks, sizes, k)
    table_meta = {
        "model_hash": lat.model_hash,
        "images_hash": lat.images_hash,
        "proxy_hash": proxy_meta["hash"],
    }
    ref = CostTable(k, oracle.num_elements, oracle.num_pixels, oracle.z_bits, table=exact, meta=table_meta)
    check = [0, 1, (1 << k2) // 3, (1 << k2) - 2]  # a few sets: the oracle and the rows agree
    assert np.allclose(oracle.costs(check), exact[check], rtol=1e-6, equal_nan=True)
    if args.save_table:
        ref.save(args.save_table)

    rng = np.random.default_rng(0)
    probe = rng.choice(1 << k2, size=args.probe, replace=False).tolist()
    t0 = time.perf_counter()
    oracle.costs(probe)
    sets_per_s = args.probe / (time.perf_counter() - t0)

    best_order, best_bits = strategies.dp(ref)
    best_front = strategies.frontier(ref)
    result: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "quality": args.quality,
        "patch": k,
        "images": f"images in {args.images}" if args.images else "embedded photographs",
        "rows_per_position": [sum(s) for s in sizes],
        "exact": {
            "sets_per_s": round(sets_per_s, 1),
            "full_table_s": round((1 << k2) / sets_per_s, 1),
            "dp_order": str(best_order),
            "dp_bits_per_latent": best_bits / oracle.num_elements,
            "frontier": [[t, str(o), b / oracle.num_elements] for t, o, b in best_front],
        },
        "margin": surrogate.MARGIN,
        "surrogate": {},
        "row_sampling": {},
    }

    def pick(t: CostTable) -> list:
        return [strategies.dp(t)[0], *(o for _, o, _ in strategies.frontier(t))]

    for f in args.fractions:
        runs = []
        for seed in tqdm(range(args.seeds), desc=f"surrogate, sets {f:g}", unit="seed"):
            part = CostTable(k, ref.num_elements, ref.num_pixels, ref.z_bits)
            anchors = surrogate.anchor_sets(k, f, seed)
            part.table[anchors], part.known[anchors] = exact[anchors], True
            unknown = ~part.known.copy()
            t0 = time.perf_counter()
            first = surrogate.surrogate(part)
            fit_s = time.perf_counter() - t0

            def fill(sets, part=part):
                part.table[sets], part.known[sets] = exact[sets], True

            approx, picks, rounds = surrogate.settle(part, pick, fill, margin=surrogate.MARGIN)
            err = (first.table[unknown] / exact[unknown] - 1)[~np.isnan(exact[unknown])]
            computed = int(part.known.sum())
            runs.append(
                {
                    "seed": seed,
                    "sets_computed": computed,
                    "rounds": rounds,
                    "fit_s": round(fit_s, 2),
                    "fill_s_estimate": round(computed / sets_per_s, 1),
                    "fit_error_std_pct": float(100 * err.std()),
                    "fit_error_max_pct": float(100 * np.abs(err).max()),
                    **picks_regret(ref, best_bits, best_front, picks[0], picks[1:]),
                }
            )
        result["surrogate"][f"{f:g}"] = summary(runs, str(best_order)) | {
            "max_sets_computed": max(r["sets_computed"] for r in runs),
            "max_fit_error_std_pct": max(r["fit_error_std_pct"] for r in runs),
        }
    for f in args.row_fractions:
        runs = []
        for seed in tqdm(range(min(args.seeds, 3)), desc=f"row sampling {f:g}", unit="seed"):
            t = CostTable(
                k,
                ref.num_elements,
                ref.num_pixels,
                ref.z_bits,
                table=table_from_rows(blocks, sizes, k, f, seed),
            )
            runs.append(
                {
                    "seed": seed,
                    **picks_regret(
                        ref,
                        best_bits,
                        best_front,
                        strategies.dp(t)[0],
                        [o for _, o, _ in strategies.frontier(t)],
                    ),
                }
            )
        result["row_sampling"][f"{f:g}"] = summary(runs, str(best_order))
    if not shipped or args.images:
        # another model, proxy or images: the command and the models say so (the shipped pair's
        # table keeps its form)
        command = " ".join(["python experiments/bench_cost_table.py", *sys.argv[1:]])
        models = f"Model {args.model or f'shipped, quality {args.quality}'}, proxy {args.proxy or 'shipped'}"
        text = markdown(result, command, models)
    else:
        text = markdown(result)
    save_results(result, text, args.out, "bench_cost_table")
    print(text)


def markdown(r: dict, command: str | None = None, models: str | None = None) -> str:
    """The table of a run; ``command`` and ``models`` (in words) default to the shipped pair of
    its quality."""
    k, e = r["patch"], r["exact"]
    command = command or f"python experiments/bench_cost_table.py --quality {r['quality']}"
    models = models or f"Shipped model, quality {r['quality']}, its {k}×{k} proxy"
    lines = [
        f"# The {k}×{k} cost table from a fraction of its sets ({r['machine']})",
        "",
        f"Regenerate: `{command}`. {models}, the {r['images']} "
        f"({r['rows_per_position'][0]} latent positions per in-patch position).",
        "",
        f"Exact float32 table on this machine: {e['sets_per_s']} decoded sets per second, so "
        f"{e['full_table_s'] / 60:.1f} min for all {2 ** (k * k)}. Its DP optimum {e['dp_order']} "
        f"({e['dp_bits_per_latent']:.5f} bits per latent).",
        "",
        "Regret: exact rate of the schedule picked over the exact best with as many stages, minus one "
        "(0 = the same rate). Frontier: the best schedule for each budget of 1 … "
        f"{k * k} stages.",
        "",
        "## Surrogate (what `search` does): a fraction of the sets exact, the rest fitted, picks computed "
        f"exactly until they settle, with every set on a full order within {r['margin']:.2%} of the "
        "surrogate's best",
        "",
        "| sets drawn | draws | most sets computed | fill time (est.) | fit error, std | DP optimum found "
        "| worst DP regret | worst frontier regret | frontier schedules equal (worst draw) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f, v in r["surrogate"].items():
        lines.append(
            f"| {f} | {len(v['runs'])} | {v['max_sets_computed']} | "
            f"{v['max_sets_computed'] / e['sets_per_s']:.0f} s | {v['max_fit_error_std_pct']:.3f}% | "
            f"{v['dp_same']} of {len(v['runs'])} | {v['max_dp_regret_pct']:.4f}% | "
            f"{v['max_frontier_regret_pct']:.4f}% | {v['min_frontier_same']} of {k * k} |"
        )
    lines += [
        "",
        "## Rejected: a fraction of the latent positions (rows), weighted",
        "",
        "| rows kept | draws | DP optimum found | worst DP regret | worst frontier regret |",
        "|---|---|---|---|---|",
    ]
    for f, v in r["row_sampling"].items():
        lines.append(
            f"| {f} | {len(v['runs'])} | {v['dp_same']} of {len(v['runs'])} | {v['max_dp_regret_pct']:.4f}% "
            f"| {v['max_frontier_regret_pct']:.4f}% |"
        )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
