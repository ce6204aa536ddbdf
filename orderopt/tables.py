"""Cost tables as a search run builds them: opened or resumed from the run's ``costs.npz``,
filled with progress and periodic saves, or completed by a settled surrogate (k = 4).

The table itself and its oracle are :mod:`orderopt.costs`; the surrogate is
:mod:`orderopt.surrogate`. Everything here saves as it goes, so an interrupted run resumes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import orders as od
from . import strategies, surrogate
from .costs import CostTable, Oracle, order_sets
from .errors import UserError
from .results import baseline_orders

PROBE_SUBSETS = 32  # decoded sets timed before a full cost table is filled
SURROGATE_FRACTION = 1 / 16  # of the 4×4 decoded sets, computed exactly (results/bench_cost_table.md)
LONG_FILL_S = 600.0  # a fill estimated longer than this is announced, with the faster choices


def open_table(oracle: Oracle, meta: dict, patch: int, path: Path, force: bool = False) -> CostTable:
    """The run's table: the one saved at ``path`` when it belongs to the same model, images and
    proxy (and not ``force``), else an empty one; saved to ``path`` as it fills."""
    table = None
    if path.is_file() and not force:
        try:
            old = CostTable.load(path, oracle=oracle)
        except ValueError as err:
            raise UserError(f"{err}; pass --force to recompute it") from None
        if old.meta == meta and old.patch == patch:
            table = old
    table = table or CostTable.from_oracle(oracle, meta=meta)
    table.autosave(path)  # greedy and Optuna fill it lazily: an interrupted run resumes
    return table


def default_fraction(patch: int) -> float:
    """The fraction of the decoded sets computed exactly where the whole table is needed."""
    return SURROGATE_FRACTION if patch == 4 else 1.0


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


def settled_surrogate(table: CostTable, path: Path, fraction: float, seed: int) -> tuple[CostTable, dict]:
    """The complete surrogate of ``table`` (``fraction`` of its sets computed, drawn with ``seed``,
    the rest fitted), after computing exactly every schedule the DP and the frontier pick on it
    and every decoded set of a near-optimal full order (:func:`orderopt.surrogate.settle`)."""
    t0 = time.time()
    fill_resumably(table, path, subsets=surrogate.anchor_sets(table.patch, fraction, seed))

    def pick(t: CostTable) -> list[od.DecodingOrder]:
        return [strategies.dp(t)[0], *(o for _, o, _ in strategies.frontier(t))]

    def fill(sets: list[int]) -> None:
        table.fill(sets)
        table.save(path)

    approx, _, rounds = surrogate.settle(table, pick, fill, margin=surrogate.MARGIN)
    return approx, {
        "table_fraction": fraction,
        "sets_computed": int(np.sum(np.asarray(table.known, dtype=bool))),
        "settle_rounds": rounds,
        "surrogate_degree": surrogate.DEGREE,
        "surrogate_margin": surrogate.MARGIN,
        "table_s": round(time.time() - t0, 2),
    }


def scored_sets(patch: int, orders) -> set[int]:
    """Every decoded set that scoring ``orders``, the published orders and the baselines reads."""
    baselines = filter(None, baseline_orders(patch).values())
    return {s for o in [*orders, *od.published_orders(patch).values(), *baselines] for s in order_sets(o)}
