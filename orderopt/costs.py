"""The cost oracle: stage costs c(S, q) and the rate of any order.

c(S, q) is the number of bits spent on all latents at in-patch position q when they are
decoded with exactly the positions S (tiled) as context. Because positions of one stage
never see each other, the rate of an order is exact from these costs (design §2):

    rate(order) = Σ_t Σ_{q in stage t} c(S_t, q),   S_t = positions of the stages before t.

Decoded sets are bitmasks over the k² in-patch positions, bit r·k + c for (row, col).

- :class:`ProxyOracle` computes c(S, q) from an :class:`~orderopt.context.AnyOrderContext`,
  many S per batched pass. It precomputes, once, the part of the first pre-activation that
  does not depend on S and one part per in-patch position (both are linear in the input), so
  each further S costs a sum and the small 1×1 tail network at the undecoded positions only.
- :class:`CostTable` stores the costs (full table or lazily filled), saves and loads them,
  and gives the rate of any order, several positions per stage included.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm import tqdm

from .context import AnyOrderContext, raster_mask
from .files import atomic_write
from .latents import LatentSet
from .model import mixture_bits
from .orders import DecodingOrder, Position

FORMAT = "orderopt-costs"
VERSION = 1


def bitmask(positions: Iterable[Position], patch: int) -> int:
    """Bitmask of a set of in-patch positions."""
    return sum(1 << (r * patch + c) for r, c in positions)


def order_sets(order: DecodingOrder) -> list[int]:
    """The decoded set each stage of ``order`` starts from (the rows of c(S, q) it reads)."""
    return [bitmask(s, order.patch) for s, _ in order.schedule()]


@runtime_checkable
class Oracle(Protocol):
    """What a cost table is filled from: c(S, q) in bits for a batch of decoded sets S (bitmasks
    over the k² in-patch positions), NaN where q ∈ S, and the sizes rates are divided by.

    ``costs(subsets, per_image=True)`` gives each image's share, shape (len, k², images), for
    the intervals over images; an oracle without images may report one image. The rate of a
    schedule follows from the costs (:meth:`CostTable.rate`)."""

    patch: int
    num_elements: int
    num_pixels: int
    z_bits: float

    @property
    def num_images(self) -> int: ...

    def costs(self, subsets: Sequence[int], chunk: int = 0, per_image: bool = False) -> np.ndarray: ...


class FunctionOracle:
    """Any cost function as an oracle: ``fn(subset, q)`` gives c(S, q) in bits (as one image),
    e.g. a measured table of another codec or an analytic model, so that every strategy and
    the frontier run on it unchanged."""

    def __init__(
        self,
        patch: int,
        fn: Callable[[int, int], float],
        num_elements: int = 1,
        num_pixels: int = 1,
        z_bits: float = 0.0,
    ):
        self.patch, self.fn = patch, fn
        self.num_elements, self.num_pixels, self.z_bits = num_elements, num_pixels, z_bits

    @property
    def num_images(self) -> int:
        return 1

    def costs(self, subsets: Sequence[int], chunk: int = 0, per_image: bool = False) -> np.ndarray:
        n = self.patch**2
        out = np.full((len(subsets), n), np.nan)
        for i, s in enumerate(subsets):
            for q in range(n):
                if not (s >> q) & 1:
                    out[i, q] = float(self.fn(int(s), q))
        return out[..., None] if per_image else out


class ProxyOracle:
    """c(S, q) for any decoded set S, from a trained any-order proxy on held-out latents."""

    def __init__(self, proxy: AnyOrderContext, latents: LatentSet, device: str | torch.device = "cpu"):
        self.proxy = proxy.eval().to(device)
        self.device = torch.device(device)
        # Work per call, by device: a GPU wants large batches of subsets and large chunks of
        # `pre` (elements computed at once); a CPU's memory and caches want smaller ones.
        on_gpu = self.device.type == "cuda"
        self.subsets_per_call = 4096 if on_gpu else 512
        self.chunk_elements = 2**27 if on_gpu else 2**25
        # A mixture's tail gives 3K·M outputs instead of 2M and its bits take K-fold temporaries:
        # 2K times fewer subsets per chunk, so that its memory stays near a Gaussian proxy's.
        self._chunk_divisor = 1 if proxy.mixture == 1 else 2 * proxy.mixture
        self.patch = k = proxy.patch
        h_min, w_min = latents.min_size
        if h_min < k or w_min < k:
            raise ValueError(f"latents of {h_min}×{w_min} are smaller than the {k}×{k} patch")
        self.num_elements = sum(e.y_hat.numel() for e in latents.entries)
        self.num_pixels = sum(e.num_pixels for e in latents.entries)
        self.z_bits = sum(e.z_bits for e in latents.entries)
        self.latents = latents
        # Per in-patch position q: its latents of all images side by side (as H=P, W=1).
        bases, parts, ys = [[] for _ in range(k * k)], [[] for _ in range(k * k)], [[] for _ in range(k * k)]
        image_of = [[] for _ in range(k * k)]  # the image of every row, for per-image costs
        # Orders differ by tenths of a percent: no TF32 convolutions on GPUs (float32 throughout).
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for i, e in enumerate(latents.entries):
                y, h = e.y_hat[None].to(self.device), e.hyper[None].to(self.device)
                base, part = proxy.decompose(y, h)
                for q in range(k * k):
                    r, c = divmod(q, k)
                    bases[q].append(base[0, :, r::k, c::k].flatten(1))
                    parts[q].append(part[:, 0, :, r::k, c::k].flatten(2))
                    ys[q].append(y[0, :, r::k, c::k].flatten(1))
                    image_of[q].append(torch.full((ys[q][-1].shape[1],), i, device=self.device))
        self._image_of = [torch.cat(v) for v in image_of]
        # Row layout (…, P_q, channels) so that the tail network runs as plain matrix products.
        self._base = [torch.cat(b, 1).T.contiguous() for b in bases]  # (P_q, D)
        self._parts = [torch.cat(p, 2).transpose(1, 2).contiguous() for p in parts]  # (k², P_q, D)
        self._y = [torch.cat(v, 1).T.contiguous() for v in ys]  # (P_q, M)

    @property
    def num_images(self) -> int:
        return len(self.latents)

    @torch.no_grad()
    def costs(self, subsets: Sequence[int], chunk: int = 0, per_image: bool = False) -> np.ndarray:
        """c(S, q) in bits for every S in ``subsets`` and every q: array (len(subsets), k²),
        NaN where q ∈ S; with ``per_image``, (len(subsets), k², images): each image's share."""
        k2 = self.patch**2
        subsets = list(subsets)
        out = np.full((len(subsets), k2, self.num_images) if per_image else (len(subsets), k2), np.nan)
        bits = self._membership(subsets)
        for q in range(k2):
            rows = [i for i, s in enumerate(subsets) if not (s >> q) & 1]
            per = max(
                1,
                chunk or int(self.chunk_elements // max(1, self._parts[q][0].numel() * self._chunk_divisor)),
            )
            for start in range(0, len(rows), per):
                idx = rows[start : start + per]
                rows_bits = self._row_bits(bits[idx], q).double()  # (n, P_q)
                if per_image:
                    images = rows_bits.new_zeros(len(idx), self.num_images)
                    images.index_add_(1, self._image_of[q], rows_bits)
                    out[idx, q] = images.cpu().numpy()
                else:
                    out[idx, q] = rows_bits.sum(1).cpu().numpy()
        return out

    @torch.no_grad()
    def row_bits(self, subsets: Sequence[int], q: int) -> torch.Tensor:
        """Bits of every latent position (row) at in-patch position q, (len(subsets), P_q), for
        decoded sets S that do not contain q: what the costs are sums of."""
        if any((s >> q) & 1 for s in subsets):
            raise ValueError(f"position {q} is in a decoded set")
        return self._row_bits(self._membership(subsets), q)

    def _membership(self, subsets: Sequence[int]) -> torch.Tensor:
        """(len(subsets), k²) 0/1: which positions each decoded set holds."""
        k2 = self.patch**2
        return torch.tensor(
            [[(s >> p) & 1 for p in range(k2)] for s in subsets], dtype=torch.float32, device=self.device
        )

    def _row_bits(self, bits: torch.Tensor, q: int) -> torch.Tensor:
        base, parts = self._base[q], self._parts[q]
        # One matrix product for the first layer of every S, then the tail in place.
        pre = torch.addmm(base.reshape(1, -1), bits, parts.reshape(len(parts), -1))
        params = self.proxy.entropy.tail_rows(pre.view(len(bits), *base.shape), inplace=True)
        return mixture_bits(self._y[q], params).sum(2)

    @torch.no_grad()
    def raster_bits(self) -> np.ndarray:
        """Bits of ŷ of every image under the autoregressive (raster) context, on the proxy's
        weights: the tap mask of :func:`~orderopt.context.raster_mask` at every latent. Only
        meaningful for a proxy trained with it (``raster_fraction`` > 0)."""
        kernel = raster_mask(self.proxy.kernel_size).to(self.device)
        out = []
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32, as the orders' costs
            for e in self.latents.entries:
                y, h = e.y_hat[None].to(self.device), e.hyper[None].to(self.device)
                out.append(float(mixture_bits(y, self.proxy.forward_kernel(y, h, kernel)).double().sum()))
        return np.array(out)


DENSE_MAX_PATCH = 4  # 2^16 rows; a dense 5×5 table would take 6.7 GB and a 6×6 one 18 TiB


class SparseRows:
    """The rows of a table too large to allocate (k ≥ 5), kept by subset as they are computed;
    indexed like the dense array (``rows[S, q]``, ``rows[S]``, ``rows[[S, …]] = values``)."""

    def __init__(self, n: int, width: int):
        self.n, self.width, self.rows = n, width, {}

    def __len__(self) -> int:
        return self.n

    def _row(self, s) -> np.ndarray:
        row = self.rows.get(int(s))
        return row if row is not None else np.full(self.width, np.nan)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self._row(key[0])[key[1]]
        return np.array([self._row(s) for s in key]) if np.ndim(key) else self._row(key)

    def __setitem__(self, key, values) -> None:
        for s, v in zip(np.atleast_1d(key), np.atleast_2d(values), strict=True):
            self.rows[int(s)] = np.array(v, dtype=float)


class SparseKnown:
    """Which rows of :class:`SparseRows` are computed (the full set needs none)."""

    def __init__(self, rows: SparseRows):
        self.rows = rows

    def __getitem__(self, s) -> bool:
        return int(s) in self.rows.rows or int(s) == self.rows.n - 1

    def __setitem__(self, key, value) -> None:
        pass  # a row is known once it is set

    def all(self) -> bool:
        return len(self.rows.rows) + (self.rows.n - 1 not in self.rows.rows) >= self.rows.n


class CostTable:
    """Stage costs c(S, q) of one patch size on one latent set, filled fully or lazily.

    ``table[S, q]`` holds bits (NaN: not computed, or q ∈ S). With an oracle attached,
    missing rows are computed on demand, so that greedy and Optuna searches on large
    patches touch only the subsets they visit.
    """

    def __init__(
        self,
        patch: int,
        num_elements: int,
        num_pixels: int,
        z_bits: float,
        table: np.ndarray | None = None,
        oracle: Oracle | None = None,
        meta: dict | None = None,
    ):
        self.patch = patch
        n = 1 << (patch * patch)
        if table is None and patch > DENSE_MAX_PATCH:  # filled lazily, row by row
            self.table = SparseRows(n, patch * patch)
            self.known = SparseKnown(self.table)
        else:
            self.table = table if table is not None else np.full((n, patch * patch), np.nan)
            self.known = ~np.all(np.isnan(self.table), axis=1)
            self.known[n - 1] = True  # the full set has nothing left to decode
        self.num_elements, self.num_pixels, self.z_bits = num_elements, num_pixels, z_bits
        self.oracle = oracle
        self.meta = dict(meta or {})
        # Per image, for intervals over images: c(S, ·) of the subsets asked for (k², images),
        # and the bits of the autoregressive schedule on the same weights (None: not computed).
        self.image_costs: dict[int, np.ndarray] = {}
        self.raster_image_bits: np.ndarray | None = None
        self._autosave: tuple[Path, float, float] | None = None  # (path, every_s, last save)

    def autosave(self, path: str | Path, every_s: float = 30.0) -> None:
        """Save to ``path`` whenever rows were computed and ``every_s`` seconds have passed
        since the last save: a lazily filled search (greedy, Optuna) interrupted and run
        again resumes with the rows it had, as the full-table fill does."""
        self._autosave = (Path(path), every_s, time.perf_counter())

    @classmethod
    def from_oracle(cls, oracle: Oracle, meta: dict | None = None) -> CostTable:
        """An empty table that fills itself from ``oracle`` as entries are asked for."""
        return cls(
            oracle.patch, oracle.num_elements, oracle.num_pixels, oracle.z_bits, oracle=oracle, meta=meta
        )

    def fill(self, subsets: Iterable[int] | None = None, batch: int = 256, progress: bool = False) -> None:
        """Compute the rows of ``subsets`` (default: all) that are still missing."""
        todo = [s for s in (range(len(self.table)) if subsets is None else subsets) if not self.known[s]]
        if not todo:
            return
        if self.oracle is None:
            raise ValueError("cost table is incomplete and has no oracle to fill it")
        for start in tqdm(
            range(0, len(todo), batch),
            desc=f"costs {self.patch}×{self.patch}",
            unit="batch",
            disable=not progress or len(todo) <= batch,
        ):
            chunk = todo[start : start + batch]
            self.table[chunk] = self.oracle.costs(chunk)
            self.known[chunk] = True
        if self._autosave is not None:
            path, every_s, last = self._autosave
            if time.perf_counter() - last >= every_s:
                self.save(path)
                self._autosave = (path, every_s, time.perf_counter())

    def fill_images(self, subsets: Iterable[int]) -> None:
        """Per-image costs of ``subsets`` (those still missing), in one batched pass."""
        todo = sorted({int(s) for s in subsets} - set(self.image_costs) - {len(self.table) - 1})
        if not todo:
            return
        if self.oracle is None:
            raise ValueError("per-image costs are missing and the cost table has no oracle to compute them")
        batch = 256
        for start in tqdm(
            range(0, len(todo), batch), desc="per-image costs", unit="batch", disable=len(todo) <= batch
        ):
            chunk = todo[start : start + batch]
            for s, row in zip(chunk, self.oracle.costs(chunk, per_image=True), strict=True):
                self.image_costs[s] = row
                if not self.known[s]:  # the total comes with it: no second pass for this row
                    self.table[s] = row.sum(-1)
                    self.known[s] = True

    def image_rates(self, order: DecodingOrder) -> np.ndarray:
        """Bits of ŷ of every image under ``order`` (sums to :meth:`rate` up to rounding)."""
        k = self.patch
        self.fill_images(order_sets(order))
        return sum(self.image_costs[bitmask(s, k)][r * k + c] for s, pos in order.schedule() for r, c in pos)

    def fill_raster(self) -> None:
        """The autoregressive schedule's bits per image on the oracle's weights."""
        if self.raster_image_bits is None:
            if self.oracle is None:
                raise ValueError("the autoregressive rate is missing and the cost table has no oracle")
            self.raster_image_bits = self.oracle.raster_bits()

    @property
    def complete(self) -> bool:
        return bool(self.known.all())

    def cost(self, subset: int, q: int) -> float:
        """c(S, q) in bits (q must not be in S)."""
        if (subset >> q) & 1:
            raise ValueError(f"position {divmod(q, self.patch)} is already in the decoded set")
        self.fill([subset])
        return float(self.table[subset, q])

    def row(self, subset: int) -> np.ndarray:
        """c(S, ·) for all q (NaN for q ∈ S)."""
        self.fill([subset])
        return self.table[subset]

    def stage_costs(self, order: DecodingOrder) -> list[float]:
        """Bits of every stage of ``order``: Σ_{q in stage t} c(S_t, q)."""
        if order.patch != self.patch:
            raise ValueError(
                f"order {order} is {order.patch}×{order.patch}, the cost table {self.patch}×{self.patch}"
            )
        k = self.patch
        self.fill(order_sets(order))
        return [
            float(sum(self.table[bitmask(s, k), r * k + c] for r, c in pos)) for s, pos in order.schedule()
        ]

    def knows(self, order: DecodingOrder) -> bool:
        """Whether every row ``order`` reads is computed (its rate needs no oracle)."""
        return all(self.known[s] for s in order_sets(order))

    def rate(self, order: DecodingOrder) -> float:
        """Total bits of ŷ on the latent set under ``order``."""
        return float(sum(self.stage_costs(order)))

    def bits_per_latent(self, order: DecodingOrder) -> float:
        return self.rate(order) / self.num_elements

    def bpp(self, order: DecodingOrder) -> float:
        """Total bits per pixel, ẑ included."""
        return (self.rate(order) + self.z_bits) / self.num_pixels

    def save(self, path: str | Path) -> None:
        """Atomic ``.npz`` with the table, what is known, and the metadata."""
        atomic_write(
            path,
            lambda tmp: np.savez_compressed(
                tmp,
                format=FORMAT,
                version=VERSION,
                patch=self.patch,
                **self._rows_to_save(),
                num_elements=self.num_elements,
                num_pixels=self.num_pixels,
                z_bits=self.z_bits,
                meta_keys=np.array(list(self.meta), dtype=str),
                meta_values=np.array([str(v) for v in self.meta.values()], dtype=str),
                image_subsets=np.array(sorted(self.image_costs), dtype=np.int64),
                image_costs=np.array([self.image_costs[s] for s in sorted(self.image_costs)]),
                raster_image_bits=(
                    self.raster_image_bits if self.raster_image_bits is not None else np.zeros(0)
                ),
            ),
        )

    def _rows_to_save(self) -> dict[str, np.ndarray]:
        """Dense: the whole table and its known mask. Sparse: the computed rows and their subsets."""
        if isinstance(self.table, SparseRows):
            subsets = sorted(self.table.rows)
            rows = np.array([self.table.rows[s] for s in subsets]).reshape(-1, self.patch**2)
            return {"table": rows, "known": np.array(subsets, dtype=np.int64), "sparse": np.array(True)}
        return {"table": self.table, "known": self.known}

    @classmethod
    def load(cls, path: str | Path, oracle: ProxyOracle | None = None) -> CostTable:
        path = Path(path)
        try:
            d = np.load(path, allow_pickle=False)
            if str(d["format"]) != FORMAT or int(d["version"]) != VERSION:
                raise ValueError
            sparse = "sparse" in d.files and bool(d["sparse"])
            t = cls(
                int(d["patch"]),
                int(d["num_elements"]),
                int(d["num_pixels"]),
                float(d["z_bits"]),
                table=None if sparse else d["table"].copy(),
                oracle=oracle,
                meta=dict(zip(d["meta_keys"].tolist(), d["meta_values"].tolist(), strict=True)),
            )
            if sparse:
                t.table[d["known"]] = d["table"]
            else:
                t.known = d["known"].copy()
            if "image_subsets" in d.files:
                t.image_costs = dict(zip(d["image_subsets"].tolist(), d["image_costs"], strict=True))
                t.raster_image_bits = d["raster_image_bits"].copy() if d["raster_image_bits"].size else None
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(
                f"cost table {path} cannot be read or is not an orderopt cost table ({err})"
            ) from None
        return t
