"""Search strategies over decoding orders, all driven by a cost table c(S, q).

- :func:`exhaustive`: score every full order (k ≤ 3).
- :func:`dp`: the exact optimum over full orders, a shortest path through the lattice of
  subsets (dp[S ∪ {q}] = min dp[S] + c(S, q)); needs the whole table (2^{k²} rows).
- :func:`frontier`: the best schedule for every stage budget T = 1 … k² at once (compiled DP,
  k ≤ 4): the rate–stages frontier.
- :func:`greedy`: position by position, then pairwise stage swaps until none helps.
- :func:`optuna_search`: Optuna over permutations (Lehmer code), with any objective and a
  shared storage so that several processes or machines work on one study.

The command line reaches them through :data:`REGISTRY`: one :class:`Strategy` subclass per
strategy, with its name, its largest patch and whether it needs the whole cost table, and a
``search(context)`` returning a :class:`SearchResult`. A new strategy is one registered class
(``tests/test_strategies.py`` runs its contract on every registered strategy).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np

from .costs import CostTable
from .orders import DecodingOrder


def _order_from_sequence(seq: list[int], k: int) -> DecodingOrder:
    return DecodingOrder.from_sequence([int(q) for q in seq], k)


def exhaustive(table: CostTable, max_patch: int = 3) -> list[tuple[DecodingOrder, float]]:
    """Every full order with its rate in bits, best first (k ≤ ``max_patch``)."""
    k = table.patch
    if k > max_patch:
        raise ValueError(
            f"exhaustive search of {k}×{k} means {math.factorial(k * k):.3g} orders; use dp or greedy"
        )
    table.fill()
    n = k * k
    # one row per permutation, in itertools' (lexicographic) order, which breaks ties in the sort
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)
    bit = np.left_shift(1, perms)
    before = np.cumsum(bit, axis=1) - bit  # the decoded set when each position is decoded
    costs = np.asarray(table.table)[before, perms]
    bits = np.zeros(len(perms))
    for j in range(n):  # summed stage by stage, as table.rate does: the same float64 sums
        bits += costs[:, j]
    rank = np.argsort(bits, kind="stable")
    stage_of = np.empty_like(perms)  # the inverse permutation: the stage of every position
    stage_of[np.arange(len(perms))[:, None], perms] = np.arange(n)
    rows = stage_of[rank].reshape(-1, k, k).tolist()
    ordered = bits[rank].tolist()
    return [(DecodingOrder._trusted(tuple(map(tuple, r))), b) for r, b in zip(rows, ordered, strict=True)]


@numba.njit(cache=True, nogil=True)
def _forward(costs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """best[S]: least bits of decoding the set S one position at a time; choice[S]: the last
    position of that order (every successor S ∪ {q} is numerically larger than S)."""
    full = (1 << n) - 1
    best = np.full(full + 1, np.inf)
    choice = np.full(full + 1, -1, np.int64)
    best[0] = 0.0
    for s in range(full):
        if not np.isfinite(best[s]):
            continue
        for q in range(n):
            if (s >> q) & 1:
                continue
            v = best[s] + costs[s, q]
            if v < best[s | (1 << q)]:
                best[s | (1 << q)], choice[s | (1 << q)] = v, q
    return best, choice


@numba.njit(cache=True, nogil=True)
def _backward(costs: np.ndarray, n: int) -> np.ndarray:
    """rest[S]: least bits of decoding the positions outside S after S, one at a time."""
    full = (1 << n) - 1
    rest = np.full(full + 1, np.inf)
    rest[full] = 0.0
    for s in range(full - 1, -1, -1):
        for q in range(n):
            if not (s >> q) & 1:
                v = costs[s, q] + rest[s | (1 << q)]
                if v < rest[s]:
                    rest[s] = v
    return rest


def _costs(table: CostTable) -> np.ndarray:
    table.fill()
    return np.ascontiguousarray(table.table, dtype=np.float64)


def dp(table: CostTable) -> tuple[DecodingOrder, float]:
    """The exact best full order under ``table`` and its rate in bits."""
    k = table.patch
    n, full = k * k, (1 << (k * k)) - 1
    best, choice = _forward(_costs(table), n)
    seq, s = [], full
    while s:
        q = int(choice[s])
        seq.append(q)
        s &= ~(1 << q)
    return _order_from_sequence(seq[::-1], k), float(best[full])


def through(table: CostTable) -> np.ndarray:
    """For every decoded set S, the least bits of a full order that passes through S (its
    minimum, at the sets of the optimal orders, is :func:`dp`'s rate)."""
    costs, n = _costs(table), table.patch**2
    return _forward(costs, n)[0] + _backward(costs, n)


@numba.njit(cache=True, nogil=True)
def _frontier_kernel(costs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """best[t, S]: least bits to decode the set S in exactly t stages; choice[t, S]: the last
    stage's group. One pass over the decoded sets A in increasing order (every predecessor of
    a set is numerically smaller), each extended by every nonempty group G of undecoded
    positions, at the cost Σ_{q∈G} c(A, q) built up over G's submasks (3^n pairs (A, G))."""
    full = (1 << n) - 1
    best = np.full((n + 1, full + 1), np.inf)
    choice = np.zeros((n + 1, full + 1), np.int32)
    best[0, 0] = 0.0
    group = np.zeros(full + 1)
    for a in range(full):
        rest = full & ~a
        size = 0
        for q in range(n):
            size += (a >> q) & 1
        top = min(n, size + 1)  # best[t - 1, a] is infinite for t - 1 > |a|
        g = (0 - rest) & rest
        while g != 0:
            low = g & -g
            q = 0
            while (low >> q) != 1:
                q += 1
            group[g] = group[g & (g - 1)] + costs[a, q]
            to = a | g
            for t in range(1, top + 1):
                v = best[t - 1, a] + group[g]
                if v < best[t, to]:
                    best[t, to] = v
                    choice[t, to] = g
            g = (g - rest) & rest
    return best, choice


def frontier(table: CostTable) -> list[tuple[int, DecodingOrder, float]]:
    """The rate–stages frontier: for every budget T = 1 … k², the best schedule with at most
    T stages (positions of a stage decoded in parallel, each seeing only earlier stages) and
    its rate in bits. Exact over the full cost table (k ≤ 4); rates never increase with T, T = 1
    is hyperprior-only, and T = k² is the optimum of :func:`dp` or better (better only where
    some position costs more with more context, when grouping it pays)."""
    k = table.patch
    if k > 4:
        raise ValueError(f"the frontier needs the full cost table, 2^{k * k} rows for {k}×{k}; use k ≤ 4")
    n, full = k * k, (1 << (k * k)) - 1
    best, choice = _frontier_kernel(_costs(table), n)
    out = []
    for budget in range(1, n + 1):
        t = int(np.argmin(best[1 : budget + 1, full])) + 1  # the fewest stages among equal rates
        groups, s = [], full
        for level in range(t, 0, -1):
            g = int(choice[level, s])
            groups.append([q for q in range(n) if (g >> q) & 1])
            s &= ~g
        out.append((budget, DecodingOrder.from_sequence(groups[::-1], k), float(best[t, full])))
    return out


def greedy(table: CostTable, refine: bool = True) -> tuple[DecodingOrder, float]:
    """Cheapest next position at every step, then best-improvement pairwise stage swaps."""
    k = table.patch
    n = k * k
    s, seq = 0, []
    for _ in range(n):
        row = table.row(s)
        q = min((q for q in range(n) if not (s >> q) & 1), key=lambda q: row[q])
        seq.append(q)
        s |= 1 << q
    order = _order_from_sequence(seq, k)
    bits = table.rate(order)
    while refine:
        best_move = None
        for i, j in itertools.combinations(range(n), 2):
            cand = list(seq)
            cand[i], cand[j] = cand[j], cand[i]
            b = table.rate(_order_from_sequence(cand, k))
            if b < bits - 1e-9 and (best_move is None or b < best_move[1]):
                best_move = (cand, b)
        if best_move is None:
            break
        seq, bits = best_move
        order = _order_from_sequence(seq, k)
    return order, bits


def lehmer_to_sequence(code: list[int], n: int) -> list[int]:
    """Permutation of 0..n−1 from a Lehmer code (code[i] indexes the positions still left)."""
    left = list(range(n))
    return [left.pop(c) for c in code]


def optuna_search(
    objective: Callable[[DecodingOrder], float],
    patch: int,
    trials: int,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    progress: bool = False,
):
    """Optuna (TPE) over full orders; returns the study. Trials of an order already scored
    in the study reuse its value, so no order is paid for twice.

    With ``storage`` (e.g. ``sqlite:///study.db``) and ``study_name``, several processes run
    this on one study: each adds ``trials`` trials.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = patch * patch
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    study = _open_study(optuna, study_name, storage, sampler)

    def run(trial: optuna.Trial) -> float:
        code = [trial.suggest_int(f"p{i}", 0, n - 1 - i) for i in range(n - 1)] + [0]
        order = _order_from_sequence(lehmer_to_sequence(code, n), patch)
        trial.set_user_attr("order", str(order))
        for done in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if done.user_attrs.get("order") == str(order):
                trial.set_user_attr("reused", True)
                return float(done.value)
        return float(objective(order))

    study.optimize(run, n_trials=trials, show_progress_bar=progress)
    return study


def _open_study(optuna, study_name, storage, sampler, attempts: int = 20):
    """Create or join a study; workers started together race to create it, so a failed
    attempt is retried after a short random wait (the storage's tables are created once,
    under a lock, by :func:`open_storage`)."""
    import random
    import time

    if isinstance(storage, str):
        storage = open_storage(storage)
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=study_name,
                storage=storage,
                sampler=sampler,
                direction="minimize",
                load_if_exists=True,
            )
        except Exception:
            if storage is None or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3))
    raise AssertionError("unreachable")


def journal_path(url: str) -> str | None:
    """The file of a journal storage (``journal:PATH``, or a path ending in .log or .journal)."""
    if url.startswith("journal:"):
        return url[len("journal:") :]
    if "://" not in url and url.endswith((".log", ".journal")):
        return url
    return None


def open_storage(url: str):
    """An Optuna storage that many processes started at the same instant can share.

    ``journal:PATH`` (or ``PATH.log``) is Optuna's journal file storage, the one it recommends
    for several processes without a database server. Database URLs (``sqlite:///study.db``)
    get their tables created by one process at a time, under a lock file beside the database
    (SQLAlchemy's table creation is not safe when two processes race on a fresh file), and
    SQLite waits up to a minute for a busy database instead of failing.
    """
    import fcntl

    import optuna

    path = journal_path(url)
    if path is not None:
        backend = optuna.storages.journal.JournalFileBackend(path)
        return optuna.storages.JournalStorage(backend)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    db = url.split(":///", 1)[1] if url.startswith("sqlite:///") else None
    if db is None:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def study_orders(study) -> list[tuple[DecodingOrder, float]]:
    """Distinct orders of a study's finished trials with their values, best first."""
    import optuna

    seen: dict[str, float] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        seen.setdefault(t.user_attrs["order"], t.value)
    return sorted(((DecodingOrder.parse(o), v) for o, v in seen.items()), key=lambda x: x[1])


def enumerate_rates(table: CostTable, orders) -> list[tuple[DecodingOrder, float]]:
    """Rates of the given orders, best first."""
    return sorted(((o, table.rate(o)) for o in orders), key=lambda x: x[1])


# --- the strategy interface -------------------------------------------------------------------
@dataclass
class SearchContext:
    """What a strategy may use: the cost table, a way to fill all of it (resumably, with
    progress), the objective to minimise (the table's rate, or a dedicated model's) and the
    command line's options (trials, seed, storage, study, top)."""

    table: CostTable
    objective: Callable[[DecodingOrder], float]
    fill_table: Callable[[], None] | None = None
    options: dict = field(default_factory=dict)

    def fill(self) -> None:
        (self.fill_table or self.table.fill)()


@dataclass
class SearchResult:
    """Candidate orders with the strategy that found them, and what the manifest records
    (keys ending in ``_s`` are timings)."""

    found: dict[DecodingOrder, str]
    info: dict


class Strategy:
    """A search strategy: ``search(context)`` returns candidate orders of ``context.table.patch``."""

    name: str = ""
    max_patch: int = 0
    full_table: bool = False  # needs every row of the cost table (2^{k²})

    def search(self, context: SearchContext) -> SearchResult:
        raise NotImplementedError


REGISTRY: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    REGISTRY[cls.name] = cls()
    return cls


def auto_strategy(patch: int) -> str:
    """The default: exhaustive for k ≤ 2, the exact DP for k ≤ 4, greedy beyond."""
    return "exhaustive" if patch <= 2 else "dp" if patch <= 4 else "greedy"


def _filled(context: SearchContext) -> dict:
    t0 = time.time()
    context.fill()
    return {"table_s": round(time.time() - t0, 2)}


@register
class Exhaustive(Strategy):
    name, max_patch, full_table = "exhaustive", 3, True

    def search(self, context: SearchContext) -> SearchResult:
        info = _filled(context)
        found: dict[DecodingOrder, str] = {}
        for order, _ in exhaustive(context.table):
            found.setdefault(order, self.name)
        return SearchResult(found, info)


@register
class ExactDP(Strategy):
    name, max_patch, full_table = "dp", 4, True

    def search(self, context: SearchContext) -> SearchResult:
        info = _filled(context)
        t1 = time.time()
        best, _ = dp(context.table)
        info["dp_s"] = round(time.time() - t1, 3)
        found = {best: self.name}
        t1 = time.time()
        g, gbits = greedy(context.table)
        info["greedy_s"] = round(time.time() - t1, 3)
        found.setdefault(g, "greedy")
        info["greedy_gap_pct"] = 100 * (gbits / context.table.rate(best) - 1)
        return SearchResult(found, info)


@register
class Greedy(Strategy):
    name, max_patch = "greedy", 6

    def search(self, context: SearchContext) -> SearchResult:
        best, _ = greedy(context.table)
        return SearchResult({best: self.name}, {})


@register
class OptunaTPE(Strategy):
    name, max_patch = "optuna", 8

    def search(self, context: SearchContext) -> SearchResult:
        o = context.options
        study = optuna_search(
            context.objective,
            context.table.patch,
            o.get("trials", 200),
            seed=o.get("seed", 0),
            storage=o.get("storage"),
            study_name=o.get("study"),
            progress=o.get("progress", False),
        )
        found: dict[DecodingOrder, str] = {}
        for order, _ in study_orders(study)[: o.get("top", 20)]:
            found.setdefault(order, self.name)
        return SearchResult(found, {"trials_in_study": len(study.trials)})
