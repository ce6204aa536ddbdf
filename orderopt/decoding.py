"""Decoding schedules: which latents each stage decodes, and their Gaussian parameters given
the stages before it, computed at those latents only (a mixture's params where the context
model predicts mixtures: every schedule passes on whatever tuple the entropy network gives).

A context model provides its schedule (``model.schedule(order, height, width, dtype)``); the
codec runs any schedule the same way, encoder and decoder alike::

    y = schedule.new_latents(M, device)
    for t in range(schedule.num_stages):
        params = schedule.params(y, hyper, t)            # (means, scales), from the stages before t
        values = entropy-(de)code(*params)               # stage t's latents, as rows
        schedule.put(y, t, values)

- :class:`MultistageSchedule`: a dedicated multistage model, through :class:`DecodingState`
  (ŷ in a padded buffer, a stage's decoded neighbours gathered with one index).
- :class:`ProxySchedule`: the any-order proxy for any order that tiles its patch.
- The autoregressive model's serial decoder, ``RasterSchedule``, is in :mod:`orderopt.context`
  beside the model it decodes.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .model import Params
from .orders import DecodingOrder


def _rows_of(parts: list[Params]) -> Params:
    """The params of several groups of latents (each (1, n_i, M)) as one (Σ n_i, M) each."""
    return tuple(torch.cat([v[0] for v in group]) for group in zip(*parts, strict=True))


class Schedule:
    """Which latents each stage decodes and their Gaussian parameters given earlier stages."""

    num_stages: int
    shape: tuple[int, int]  # (H, W) of ŷ
    order: DecodingOrder | None = None  # the order the stream records (None: raster)

    def params(self, y: torch.Tensor, hyper: torch.Tensor, t: int) -> Params:
        """(means, scales) (or a mixture's params), each (n_t, M) in float32, of stage t's
        latents, in :meth:`take`'s order."""
        raise NotImplementedError

    def take(self, y: torch.Tensor, t: int) -> torch.Tensor:
        """Stage t's latents of y (1, M, H, W) as rows (n_t, M)."""
        raise NotImplementedError

    def put(self, y: torch.Tensor, t: int, values: torch.Tensor) -> None:
        """Write (n_t, M) values of stage t into y, inverse of :meth:`take`."""
        raise NotImplementedError

    def new_latents(self, channels: int, device: torch.device) -> torch.Tensor:
        """The zero ŷ (1, M, H, W) that the stages fill in; pass it to :meth:`params`."""
        return torch.zeros(1, channels, *self.shape, device=device)


class _OrderStages(Schedule):
    """The stages of a decoding order on an H×W latent grid: ŷ kept as rows (H·W, M), a stage's
    latents per in-patch position as flat indices into it."""

    def __init__(self, order: DecodingOrder, height: int, width: int, device: torch.device, dtype):
        self.order, self.dtype = order, dtype
        self.num_stages, self.shape = order.num_stages, (height, width)
        self.positions = [list(order.stage_positions(t)) for t in range(order.num_stages)]
        self.stage = torch.from_numpy(order.stage_map(height, width)).to(device)
        self._state: tuple[torch.Tensor, object] | None = None  # (hyper, its per-image state)
        k, flat = order.patch, torch.arange(height * width, device=device).view(height, width)
        # per stage, each position's latents as flat indices into ŷ's H·W grid (take's order)
        per_position = [[flat[r::k, c::k].reshape(-1) for r, c in p] for p in self.positions]
        self._index = [torch.cat(f) for f in per_position]
        self._sizes = [[len(i) for i in f] for f in per_position]  # how put splits a stage
        self._rows: torch.Tensor | None = None

    def _image_state(self, hyper: torch.Tensor):
        raise NotImplementedError

    def _for(self, hyper: torch.Tensor):
        """The per-image state of ``hyper``, built once per image."""
        if self._state is None or self._state[0] is not hyper:
            self._state = (hyper, self._image_state(hyper))
        return self._state[1]

    def take(self, y, t):
        return y[0].flatten(1).T[self._index[t]]

    def new_latents(self, channels, device):
        """ŷ stored as rows (H·W, M), so that a stage's values are written as whole rows; the
        (1, M, H, W) view returned is channels-last."""
        self._rows = torch.zeros(self.shape[0] * self.shape[1], channels, device=device)
        return self._rows.view(1, *self.shape, channels).permute(0, 3, 1, 2)

    def put(self, y, t, values):
        if self._rows is None or y.data_ptr() != self._rows.data_ptr():
            raise ValueError(f"{type(self).__name__}.put needs the latents from its new_latents()")
        self._rows.index_copy_(0, self._index[t], values)


class MultistageSchedule(_OrderStages):
    """A dedicated multistage model's stages, the context network's arithmetic in ``dtype``."""

    def __init__(self, model, height: int, width: int, dtype=torch.float32):
        super().__init__(model.order, height, width, next(model.parameters()).device, dtype)
        self.model = model  # it casts its own weights (DecodingState)

    def _image_state(self, hyper):
        return DecodingState(self.model, hyper, self.dtype)

    def params(self, y, hyper, t):
        """Only this stage's latents, per in-patch position, from the model's DecodingState."""
        state = self._for(hyper)
        return _rows_of([state.params(r, c) for r, c in self.positions[t]])

    def put(self, y, t, values):
        super().put(y, t, values)
        if self._state is not None:
            for (r, c), part in zip(self.positions[t], values.split(self._sizes[t]), strict=True):
                self._state[1].put(r, c, part[None])


class ProxySchedule(_OrderStages):
    """The any-order proxy's stages for an order that tiles its patch (:func:`proxy_order`),
    the network's arithmetic in ``dtype``."""

    def __init__(self, model, order: DecodingOrder, height: int, width: int, dtype=torch.float32):
        super().__init__(order, height, width, next(model.parameters()).device, dtype)
        if dtype != next(model.parameters()).dtype:
            model = copy.deepcopy(model).to(dtype)  # the proxy is small
        self.model = model

    def _image_state(self, hyper):
        return self.model.entropy.hyper_in(hyper.to(self.dtype))  # h's share, once per image

    def params(self, y, hyper, t):
        """Only this stage's latents, per in-patch position: the proxy's strided convolution
        given the decoded set S_t."""
        share = self._for(hyper)
        decoded = (self.stage < t).to(self.dtype)[None, None]
        y, hyper = y.to(self.dtype), hyper.to(self.dtype)
        out = self.model.stage_params(y, hyper, decoded, self.positions[t], share)
        return _rows_of([tuple(v.flatten(2).transpose(1, 2).float() for v in params) for params in out])


class DecodingState:
    """A multistage model's decoder for one image: ŷ as far as it is decoded, and the Gaussian
    parameters of one in-patch position's latents given it, at those latents only.

    Everything is laid out as rows, one per latent (latents × channels). ŷ lives in a
    zero-padded buffer that :meth:`put` fills in, so a stage gathers its latents' decoded
    neighbours under the taps that see any (rows of M contiguous values) with one precomputed
    index, instead of padding and slicing ŷ; a stage is then four matrix products. h's share of
    the entropy network is computed once per image. The arithmetic runs in ``dtype``: float32,
    or bfloat16 where matrix units make batched products several times faster (an encoder and
    its decoder must use the same).
    """

    def __init__(self, model, hyper: torch.Tensor, dtype: torch.dtype | None = None):
        b, _, height, width = hyper.shape
        self.model, self.dtype = model, dtype or model.weight.dtype
        self.k, half = model.order.patch, model.kernel_size // 2
        self.shape, self.pw = (height, width), width + 2 * half
        self.taps = model.tap_matrices(self.dtype)
        self.weights = w = model.entropy_weights(self.dtype)
        rows = hyper.to(self.dtype).flatten(2).transpose(1, 2)  # (B, H·W, C_h)
        self.share = F.linear(rows, w["hyper_in"], w["hyper_bias"])
        m = model.weight.shape[2]
        self.buffer = hyper.new_zeros(b, (height + 2 * half) * self.pw, m, dtype=self.dtype)
        self._where: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def _indices(self, r: int, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Position (r, c)'s latents in raster order: their flat index in ŷ and in the padded
        buffer, and the buffer index of each of their taps (latent-major), once per image."""
        hit = self._where.get((r, c))
        if hit is None:
            (height, width), k, dev = self.shape, self.k, self.buffer.device
            half = self.model.kernel_size // 2
            rows = torch.arange(r, height, k, device=dev)[:, None]
            cols = torch.arange(c, width, k, device=dev)[None, :]
            plain = (rows * width + cols).reshape(-1)
            corner = (rows * self.pw + cols).reshape(-1)  # tap (i, j) of (y, x) reads padded (y + i, x + j)
            taps, _ = self.taps[r * k + c]
            offsets = torch.tensor([i * self.pw + j for i, j in taps], dtype=torch.long, device=dev)
            gather = (corner[:, None] + offsets).reshape(-1) if taps else None
            hit = self._where[(r, c)] = (plain, corner + half * self.pw + half, gather)
        return hit

    def load(self, y_hat: torch.Tensor) -> None:
        """Put all of ŷ (B, M, H, W) into the buffer (to compute any stage from it)."""
        half, (height, width) = self.model.kernel_size // 2, self.shape
        grid = self.buffer.view(self.buffer.shape[0], -1, self.pw, self.buffer.shape[2])
        grid[:, half : half + height, half : half + width] = y_hat.permute(0, 2, 3, 1).to(self.dtype)

    def put(self, r: int, c: int, values: torch.Tensor) -> None:
        """Decoded values (B, n, M) of position (r, c)'s latents, in raster order."""
        self.buffer.index_copy_(1, self._indices(r, c)[1], values.to(self.dtype))

    def params(self, r: int, c: int) -> Params:
        """(means, scales) (or a mixture's params), each (B, n, M) in float32, of position
        (r, c)'s latents in raster order, from the decoded latents under their kernel taps and
        h's share."""
        plain, _, gather = self._indices(r, c)
        (b, _, m), w, q = self.buffer.shape, self.weights, r * self.k + c
        _, matrix = self.taps[q]
        share = self.share.index_select(1, plain).flatten(0, 1)  # (B·n, D)
        if matrix is None:  # nothing decoded nearby yet: the context is the bias
            pre = share + F.linear(w["bias"][q], w["ctx_in"])
        else:
            x = self.buffer.index_select(1, gather).view(share.shape[0], -1)  # (B·n, T·M)
            pre = torch.addmm(share, F.linear(x, matrix, w["bias"][q]), w["ctx_in"].t())
        return tuple(v.float().view(b, -1, m) for v in self.model.entropy.tail_rows(pre, w))


def proxy_order(order: DecodingOrder, patch: int) -> DecodingOrder:
    """The order tiled to the proxy's patch size (a 1×1 or 2×2 order on a 4×4 proxy)."""
    reps = patch // order.patch
    return DecodingOrder(np.tile(order.stages, (reps, reps)))


# --- entropy coding --------------------------------------------------------------------------
