"""Surrogate cost tables: the whole 4×4 table from a fraction of its decoded sets.

The exact 4×4 table has 2^16 decoded sets, too many to compute quickly on a CPU
(``results/bench_cost_table.md``). Costs change smoothly with the decoded set, so a
multilinear polynomial of low degree in "which other positions are decoded", fitted per
position on a fraction of the sets, predicts the rest closely. The search runs on that
complete surrogate; what it picks is then computed exactly and the fit redone with it, until
the picks are stable (:func:`settle`), together with every decoded set on a full order within
a small margin of the best, so that near-ties are decided by exact costs. Every rate
reported is exact; how often the picks differ from the full table's is what
``experiments/bench_cost_table.py`` measures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from itertools import combinations

import numpy as np
import scipy.linalg

from . import strategies
from .costs import CostTable, order_sets
from .orders import DecodingOrder

DEGREE = 3  # terms up to products of three positions: 576 per position for 4×4
MARGIN = 5e-4  # full orders within this fraction of the surrogate's optimum are made exact


def anchor_sets(patch: int, fraction: float, seed: int, ends: int = 2) -> list[int]:
    """The decoded sets a surrogate table is fitted on: every set within ``ends`` positions of
    empty or full (they lie on many schedules and anchor the fit) and a seeded random
    ``fraction`` of the others, in increasing order."""
    n = patch * patch
    size = np.array([bin(s).count("1") for s in range(1 << n)])
    near = (size <= ends) | (size >= n - ends)
    rng = np.random.default_rng(seed)
    drawn = rng.random(1 << n) < fraction
    return np.flatnonzero(near | drawn).tolist()


def interaction_features(bits: np.ndarray, degree: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """The constant and every product of up to ``degree`` distinct columns of a 0/1 matrix
    (rows: decoded sets, columns: positions), as float32 (exact for 0/1), with the columns
    each term multiplies: a multilinear polynomial's terms. Each product of d columns is one
    of d − 1 columns times one more column, so building them costs one vector product each."""
    terms: list[tuple[int, ...]] = [()]
    cols = {(): np.ones(len(bits), np.float32)}
    for d in range(1, degree + 1):
        for c in combinations(range(bits.shape[1]), d):
            cols[c] = cols[c[:-1]] * bits[:, c[-1]].astype(np.float32)
            terms.append(c)
    return np.stack([cols[t] for t in terms], 1), terms


@lru_cache(maxsize=2)
def _features(n: int, degree: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Terms of every decoded set of n positions (all 2^n), shared by all positions q: q's
    polynomial uses the sets without q and the terms without q."""
    sets = np.arange(1 << n)
    return interaction_features((sets[:, None] >> np.arange(n)) & 1, degree)


def surrogate(table: CostTable, degree: int = DEGREE) -> CostTable:
    """A complete table from a partly filled one: the known rows as they are, every other
    c(S, q) predicted by a least-squares multilinear polynomial of degree ``degree`` in which
    other positions S holds, fitted per q on the known rows (:func:`anchor_sets` says which).

    Decoded sets interact weakly beyond a few positions, so a third-degree fit on a
    sixteenth of the 4×4 sets predicts the rest closely (``results/bench_cost_table.md``);
    schedules picked on it are then computed exactly (:func:`settle`)."""
    k, n = table.patch, table.patch**2
    full = np.array(table.table, dtype=np.float64, copy=True)
    known = np.asarray(table.known, dtype=bool)
    feats, terms = _features(n, degree)
    sets = np.arange(1 << n)
    for q in range(n):
        free = ((sets >> q) & 1) == 0  # sets that leave q to decode
        cols = [i for i, t in enumerate(terms) if q not in t]
        fit, guess = np.flatnonzero(free & known), np.flatnonzero(free & ~known)
        if len(fit) < len(cols):
            raise ValueError(
                f"{len(fit)} known sets cannot fit the {len(cols)} terms of a degree-{degree} "
                f"surrogate of position {q}; fill more of the table"
            )
        # QR with column pivoting: a tenth of the time of numpy's SVD-based lstsq at these sizes
        coef, *_ = scipy.linalg.lstsq(
            feats[np.ix_(fit, cols)].astype(np.float64), full[fit, q], lapack_driver="gelsy"
        )
        if len(guess):
            full[guess, q] = feats[np.ix_(guess, cols)] @ coef.astype(np.float32)
    out = CostTable(k, table.num_elements, table.num_pixels, table.z_bits, table=full, meta=table.meta)
    out.known[:] = True
    return out


def settle(
    table: CostTable,
    pick: Callable[[CostTable], Iterable[DecodingOrder]],
    fill: Callable[[list[int]], None],
    degree: int = DEGREE,
    margin: float = 0.0,
) -> tuple[CostTable, list[DecodingOrder], int]:
    """Pick schedules on the surrogate of ``table``, compute the decoded sets they use that are
    still missing (``fill``), and fit again, until every picked schedule is known exactly.

    With ``margin`` > 0, also every decoded set that lies on a full order within that fraction
    of the surrogate's optimum (:func:`near_optimal_sets`) is computed, so that near-ties are
    decided by exact costs rather than by the fit. Returns the last surrogate, its picks and
    the number of rounds. It ends: every round but the last computes at least one more set,
    and a complete table is its own surrogate."""
    rounds = 0
    while True:
        rounds += 1
        approx = surrogate(table, degree)
        picks = list(pick(approx))
        need = {s for o in picks for s in order_sets(o)}
        if margin > 0:
            need |= set(near_optimal_sets(approx, margin))
        missing = sorted(need - set(known_sets(table)))
        if not missing:
            return approx, picks, rounds
        fill(missing)


def near_optimal_sets(table: CostTable, margin: float) -> list[int]:
    """The decoded sets that some full order within ``margin`` (a fraction) of the best passes
    through, on a complete table."""
    bits = strategies.through(table)
    limit = bits[0] * (1 + margin) + 1e-9 * abs(bits[0])  # the best path itself, whatever the rounding
    return np.flatnonzero(bits <= limit).tolist()


def known_sets(table: CostTable) -> list[int]:
    return np.flatnonzero(np.asarray(table.known, dtype=bool)).tolist()
