"""Decoding orders of multistage spatial context models.

A multistage context model tiles the latent ŷ (C×H×W) into k×k patches and decodes
the k² in-patch positions one *stage* at a time, every patch in parallel. An order
is a k×k matrix of stage numbers 0..T−1, each used at least once; positions that
share a stage are decoded together and do not see each other.

Build orders::

    >>> from orderopt.orders import DecodingOrder, raster, checkerboard, paper_order
    >>> DecodingOrder.parse("0,1;2,3") == raster(2)
    True
    >>> str(checkerboard())
    '0,1;1,0'
    >>> DecodingOrder.from_sequence([(0, 0), (1, 1), (0, 1), (1, 0)], patch=2)
    DecodingOrder('0,2;3,1')

Inspect them::

    >>> o = paper_order(2)
    >>> o.patch, o.num_stages, o.stage_positions(1), sorted(o.decoded_before(2))
    (2, 4, ((0, 1),), [(0, 0), (0, 1)])
    >>> o.kernel_mask(1, 0, kernel_size=3).astype(int)
    array([[1, 1, 1],
           [0, 0, 0],
           [1, 1, 1]])

Enumerate and reduce by symmetry::

    >>> sum(1 for _ in enumerate_orders(2)), len(symmetry_classes(2))
    (24, 3)

Text form: rows separated by ``;``, entries by ``,`` (``"0,1;2,3"``); row index
first, so ``order.stages[row, col]`` is the stage of in-patch position (row, col).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DecodingOrder",
    "Position",
    "raster",
    "checkerboard",
    "hyperprior_only",
    "paper_order",
    "tinylic_order",
    "published_orders",
    "random_order",
    "enumerate_orders",
    "symmetry_classes",
    "dihedral_transforms",
]

Position = tuple[int, int]

_TEXT_RE = re.compile(r"^\s*-?\d+(\s*,\s*-?\d+)*(\s*;\s*-?\d+(\s*,\s*-?\d+)*)*\s*$")


def _describe(value: Any) -> str:
    """Short printable form of an offending input for error messages."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _validate(stages: Any) -> tuple[tuple[int, ...], ...]:
    """Check a stage matrix and return it as a tuple of row tuples.

    Raises ValueError naming the defect and showing the input.
    """
    shown = _describe(stages.tolist() if isinstance(stages, np.ndarray) else stages)
    if isinstance(stages, np.ndarray):
        if stages.ndim != 2:
            raise ValueError(f"order must be a 2-D k×k matrix, got an array of shape {stages.shape}: {shown}")
        if stages.size and not (np.issubdtype(stages.dtype, np.integer)):
            raise ValueError(f"order entries must be integers, got dtype {stages.dtype}: {shown}")
        rows = [list(r) for r in stages.tolist()]
    else:
        try:
            rows = [list(r) for r in stages]
        except TypeError:
            raise ValueError(f"order must be a k×k matrix (a sequence of rows), got {shown}") from None
    if not rows or all(len(r) == 0 for r in rows):
        raise ValueError(f"order is empty: {shown}")
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ValueError(f"order rows have different lengths {sorted(lengths)}: {shown}")
    k = len(rows)
    if lengths != {k}:
        raise ValueError(f"order must be square (k×k), got {k} rows of {lengths.pop()}: {shown}")
    for row in rows:
        for v in row:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"order entries must be integers, got {v!r}: {shown}")
            if v < 0:
                raise ValueError(f"stage numbers must be >= 0, got {v}: {shown}")
    used = sorted({int(v) for row in rows for v in row})
    if used[-1] >= k * k:  # checked first: the list of missing stages below is at most k² long
        raise ValueError(
            f"stage number {used[-1]} is out of range: a {k}×{k} order has at most {k * k} stages "
            f"(0..{k * k - 1}): {shown}"
        )
    missing = sorted(set(range(used[-1] + 1)) - set(used))
    if missing:
        raise ValueError(
            f"stage numbers must run 0..T-1 with each used at least once; missing {missing}: {shown}"
        )
    return tuple(tuple(int(v) for v in row) for row in rows)


class DecodingOrder:
    """An immutable, hashable k×k decoding order (stage number of every in-patch position).

    ``DecodingOrder([[0, 1], [2, 3]])`` (or the text ``DecodingOrder("0,1;2,3")``)
    validates its input and raises ``ValueError`` with the reason and the offending input
    when it is not a square matrix of stage numbers 0..T−1, each used at least once.
    """

    __slots__ = ("_rows", "_hash")

    def __init__(self, stages: Sequence[Sequence[int]] | np.ndarray | str | DecodingOrder):
        if isinstance(stages, DecodingOrder):
            rows = stages._rows
        elif isinstance(stages, str):
            rows = DecodingOrder.parse(stages)._rows
        else:
            rows = _validate(stages)
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_hash", hash(rows))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("DecodingOrder is immutable")

    @classmethod
    def _trusted(cls, rows: tuple[tuple[int, ...], ...]) -> DecodingOrder:
        """Wrap rows already known to be valid (enumeration, symmetry): skips validation."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "_rows", rows)
        object.__setattr__(obj, "_hash", hash(rows))
        return obj

    # --- construction -------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> DecodingOrder:
        """Parse the text form ``"0,1;2,3"`` (rows separated by ``;``)."""
        if not isinstance(text, str) or not _TEXT_RE.match(text):
            raise ValueError(
                f"cannot parse order {_describe(text)}: expected rows of comma-separated "
                "integers separated by ';', e.g. '0,1;2,3'"
            )
        rows = [[v.strip() for v in row.split(",")] for row in text.split(";")]
        long = next((v for row in rows for v in row if len(v.lstrip("-")) > 9), None)
        if long is not None:  # a stage number is below k², far from 10⁹; int() of it may be slow
            raise ValueError(f"stage number {_describe(long)} is out of range in order {_describe(text)}")
        return cls([[int(v) for v in row] for row in rows])

    @classmethod
    def from_sequence(
        cls, steps: Iterable[Position | int | Iterable[Position | int]], patch: int
    ) -> DecodingOrder:
        """Build an order from the positions in decoding order.

        Each step is one position — ``(row, col)`` or the flat index ``row * patch + col`` —
        or a group of positions decoded together in one stage. Every position of the
        k×k patch must appear exactly once.
        """
        if not isinstance(patch, (int, np.integer)) or patch < 1:
            raise ValueError(f"patch must be a positive integer, got {patch!r}")
        grid = [[-1] * patch for _ in range(patch)]
        steps = list(steps)
        for t, step in enumerate(steps):
            group = [step] if _is_position(step) else list(step)
            if not group:
                raise ValueError(f"step {t} of {_describe(steps)} is an empty group")
            for p in group:
                if not _is_position(p):
                    raise ValueError(f"not a position: {p!r} in {_describe(steps)}")
                r, c = divmod(int(p), patch) if isinstance(p, (int, np.integer)) else (int(p[0]), int(p[1]))
                if not (0 <= r < patch and 0 <= c < patch):
                    raise ValueError(f"position {p!r} lies outside the {patch}×{patch} patch")
                if grid[r][c] >= 0:
                    raise ValueError(f"position {(r, c)} appears twice in {_describe(steps)}")
                grid[r][c] = t
        left = [(r, c) for r in range(patch) for c in range(patch) if grid[r][c] < 0]
        if left:
            raise ValueError(f"positions {left} are never decoded in {_describe(steps)}")
        return cls(grid)

    @classmethod
    def from_json(cls, data: str | dict | list) -> DecodingOrder:
        """Read an order from JSON text, a dict with ``"stages"`` (or ``"order"``), or a list."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise ValueError(f"order JSON is not valid JSON ({err}): {_describe(data)}") from None
        if isinstance(data, dict):
            if "stages" in data:
                return cls(data["stages"])
            if "order" in data:
                return cls.parse(data["order"])
            raise ValueError(f"order JSON object needs a 'stages' or 'order' field: {_describe(data)}")
        if isinstance(data, str):
            return cls.parse(data)
        return cls(data)

    # --- basic properties ---------------------------------------------------------
    @property
    def stages(self) -> np.ndarray:
        """The k×k stage matrix (a fresh int64 array; row index first)."""
        return np.array(self._rows, dtype=np.int64)

    @property
    def patch(self) -> int:
        """Patch size k."""
        return len(self._rows)

    @property
    def num_stages(self) -> int:
        """Number of serial decoding stages T."""
        return max(max(r) for r in self._rows) + 1

    @property
    def is_full(self) -> bool:
        """True when every stage decodes exactly one in-patch position (T = k²)."""
        return self.num_stages == self.patch**2

    def stage_of(self, row: int, col: int) -> int:
        """Stage number of in-patch position (row, col)."""
        return self._rows[row][col]

    def stage_positions(self, stage: int) -> tuple[Position, ...]:
        """In-patch positions (row, col) decoded at ``stage``, row-major."""
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.num_stages - 1} for order {self}")
        k = self.patch
        return tuple((r, c) for r in range(k) for c in range(k) if self._rows[r][c] == stage)

    def decoded_before(self, stage: int) -> frozenset[Position]:
        """The set S_t of positions decoded at stages before ``stage`` (the context of stage t)."""
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.num_stages - 1} for order {self}")
        k = self.patch
        return frozenset((r, c) for r in range(k) for c in range(k) if self._rows[r][c] < stage)

    def schedule(self) -> list[tuple[frozenset[Position], tuple[Position, ...]]]:
        """``[(S_t, positions of stage t) for t in 0..T-1]``: the steps of the rate decomposition."""
        return [(self.decoded_before(t), self.stage_positions(t)) for t in range(self.num_stages)]

    def sequence(self) -> list[tuple[Position, ...]]:
        """Positions of every stage, in decoding order (inverse of :meth:`from_sequence`)."""
        return [self.stage_positions(t) for t in range(self.num_stages)]

    # --- tiling and masks ---------------------------------------------------------
    def stage_map(self, height: int, width: int) -> np.ndarray:
        """Stage of every latent position of an ``height``×``width`` latent tiled with this order.

        Latent (i, j) has in-patch position (i mod k, j mod k); partial patches at the
        bottom and right edges are cropped copies of the full patch.
        """
        if height < 1 or width < 1:
            raise ValueError(f"latent size must be positive, got {height}×{width}")
        k = self.patch
        reps = (-(-height // k), -(-width // k))
        return np.tile(self.stages, reps)[:height, :width]

    def kernel_mask(self, row: int, col: int, kernel_size: int = 5) -> np.ndarray:
        """Boolean K×K context mask of in-patch position (row, col).

        Offset (dy, dx) from the kernel centre is visible iff in-patch position
        ((row + dy) mod k, (col + dx) mod k) has a smaller stage number. This holds for
        kernels wider than the patch too: a 5×5 kernel on a 2×2 patch sees copies of the
        same in-patch position in neighbouring patches (never visible: same stage).
        """
        k = self.patch
        if not (0 <= row < k and 0 <= col < k):
            raise ValueError(f"position ({row}, {col}) lies outside the {k}×{k} patch")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        half = kernel_size // 2
        offsets = np.arange(-half, half + 1)
        rr = (row + offsets[:, None]) % k
        cc = (col + offsets[None, :]) % k
        return self.stages[rr, cc] < self._rows[row][col]

    def kernel_masks(self, kernel_size: int = 5) -> np.ndarray:
        """All context masks, shape (k, k, K, K): ``masks[row, col]`` is :meth:`kernel_mask`."""
        k = self.patch
        return np.stack([np.stack([self.kernel_mask(r, c, kernel_size) for c in range(k)]) for r in range(k)])

    # --- symmetry -----------------------------------------------------------------
    def symmetries(self) -> list[DecodingOrder]:
        """The 8 images of this order under the dihedral group of the square (with repeats)."""
        return [DecodingOrder._trusted(rows) for rows in self._symmetric_rows()]

    def _symmetric_rows(self) -> list[tuple[tuple[int, ...], ...]]:
        s = self.stages
        return [tuple(map(tuple, f(s).tolist())) for f in dihedral_transforms()]

    def canonical(self) -> DecodingOrder:
        """The representative of this order's symmetry class: its smallest image, row-major."""
        return DecodingOrder._trusted(min(self._symmetric_rows()))

    # --- serialisation ------------------------------------------------------------
    def to_dict(self, kernel_size: int | None = None) -> dict[str, Any]:
        """JSON-ready dict: ``order`` (text), ``patch``, ``num_stages``, ``stages``.

        With ``kernel_size`` the context masks are exported too, as ``masks[row][col]``
        K×K lists of 0/1 — the form to load into another framework's masked convolutions.
        """
        out: dict[str, Any] = {
            "order": str(self),
            "patch": self.patch,
            "num_stages": self.num_stages,
            "stages": [list(r) for r in self._rows],
        }
        if kernel_size is not None:
            out["kernel_size"] = kernel_size
            out["masks"] = self.kernel_masks(kernel_size).astype(int).tolist()
        return out

    def to_json(self, kernel_size: int | None = None) -> str:
        """JSON text of :meth:`to_dict`; :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(kernel_size))

    def pretty(self) -> str:
        """Multi-line grid of stage numbers, for consoles."""
        width = len(str(self.num_stages - 1))
        return "\n".join(" ".join(f"{v:>{width}}" for v in row) for row in self._rows)

    # --- dunder -------------------------------------------------------------------
    def __str__(self) -> str:
        return ";".join(",".join(str(v) for v in row) for row in self._rows)

    def __repr__(self) -> str:
        return f"DecodingOrder('{self}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecodingOrder) and self._rows == other._rows

    def __hash__(self) -> int:
        return self._hash

    def __lt__(self, other: DecodingOrder) -> bool:
        return (self.patch, self._rows) < (other.patch, other._rows)

    def __reduce__(self):
        return (DecodingOrder, ([list(r) for r in self._rows],))


def _is_position(p: Any) -> bool:
    if isinstance(p, (bool, np.bool_)):
        return False
    if isinstance(p, (int, np.integer)):
        return True
    return (
        isinstance(p, tuple)
        and len(p) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in p)
    )


def dihedral_transforms() -> list:
    """The 8 symmetries of the square as functions on k×k arrays (identity first)."""
    return [
        lambda a: a,
        lambda a: np.rot90(a, 1),
        lambda a: np.rot90(a, 2),
        lambda a: np.rot90(a, 3),
        lambda a: a.T,
        lambda a: np.rot90(a, 2).T,
        lambda a: np.fliplr(a),
        lambda a: np.flipud(a),
    ]


# --- constructors -------------------------------------------------------------------
def _check_patch(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"patch size must be a positive integer, got {k!r}")
    return int(k)


def raster(k: int) -> DecodingOrder:
    """Row-by-row order of a k×k patch: ``raster(2)`` is ``0,1;2,3``."""
    k = _check_patch(k)
    return DecodingOrder(np.arange(k * k).reshape(k, k))


def checkerboard() -> DecodingOrder:
    """He et al. 2021: anchors (even parity) first, then the rest: ``0,1;1,0``."""
    return DecodingOrder([[0, 1], [1, 0]])


def hyperprior_only() -> DecodingOrder:
    """One stage, no spatial context: ``0``."""
    return DecodingOrder([[0]])


_PAPER = {
    2: [[0, 1], [2, 3]],
    4: [[0, 2, 5, 4], [1, 7, 11, 8], [6, 12, 13, 10], [3, 14, 15, 9]],
}


def paper_order(k: int) -> DecodingOrder:
    """The order published by Lin et al. 2023 (arXiv 2302.09263) for k ∈ {2, 4}."""
    if k not in _PAPER:
        raise ValueError(f"the paper publishes orders for patch 2 and 4 only, not {k!r}")
    return DecodingOrder(_PAPER[k])


def tinylic_order() -> DecodingOrder:
    """TinyLIC's 2×2 order (Lu et al. 2022): the diagonal first, ``0,2;3,1``."""
    return DecodingOrder([[0, 2], [3, 1]])


def published_orders(k: int) -> dict[str, DecodingOrder]:
    """Full k×k orders from the literature, by name (``raster`` included)."""
    k = _check_patch(k)
    out = {"raster": raster(k)}
    if k in _PAPER:
        out["paper"] = paper_order(k)
    if k == 2:
        out["tinylic"] = tinylic_order()
    return out


def random_order(k: int, seed: int | None = None) -> DecodingOrder:
    """A uniformly random full order of a k×k patch (reproducible with ``seed``)."""
    k = _check_patch(k)
    perm = np.random.default_rng(seed).permutation(k * k)
    return DecodingOrder(perm.reshape(k, k))


def enumerate_orders(k: int) -> Iterator[DecodingOrder]:
    """Every full order of a k×k patch, lazily, in lexicographic order ((k²)! of them)."""
    k = _check_patch(k)
    for perm in itertools.permutations(range(k * k)):
        yield DecodingOrder._trusted(tuple(perm[r * k : (r + 1) * k] for r in range(k)))


def symmetry_classes(k: int) -> dict[DecodingOrder, list[DecodingOrder]]:
    """Group every full k×k order by dihedral symmetry: ``{canonical: [members]}``.

    2×2 has 24 orders in 3 classes of 8. Materialises all (k²)! orders, so k ≤ 3.
    """
    k = _check_patch(k)
    if math.factorial(k * k) > 10**6:
        raise ValueError(f"{k}×{k} has {math.factorial(k * k):.3g} orders: too many to group; use k <= 3")
    classes: dict[DecodingOrder, list[DecodingOrder]] = {}
    for order in enumerate_orders(k):
        classes.setdefault(order.canonical(), []).append(order)
    return classes
