"""Spatial context models: each maps ŷ (B×M×H×W) and h = h_s(ẑ) (B×C_h×H×W) to the means
and scales of the Gaussian of every latent, called as ``model(y_hat, hyper)``; or, built with
``mixture=K`` > 1, to the weight logits, means and scales of a mixture of K Gaussians (the
params tuple of :mod:`orderopt.model`, whose functions alone know what its entries mean).

All share the paper's shape: a linear context transform of ŷ (masked convolutions) gives
features ``ctx`` (B×2M×H×W); an entropy-parameter network of 1×1 convolutions maps
[h, ctx] to (means, scales), or to the mixture's params. Its first layer is linear, so it is
split into a hyper part and a context part; :mod:`orderopt.costs` exploits that to evaluate
many decoded sets cheaply.

- :class:`MultistageContext` (Lin et al. 2023) for any :class:`~orderopt.orders.DecodingOrder`:
  one masked K×K convolution per in-patch position, evaluated as one strided convolution
  per position (each 1/k² of the full size), so the whole model costs one convolution pass.
  Checkerboard and hyperprior-only are just orders.
- :class:`AutoregressiveContext` (Minnen et al. 2018): raster 5×5 mask-A context, evaluated in
  parallel (training and rate measurement; decoding is serial).
- :class:`AnyOrderContext`: the proxy. Its input is ŷ masked to a decoded set S, the mask, and
  the one-hot in-patch position; trained on random S, it estimates c(S, q) for every q ∉ S.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .decoding import DecodingState, MultistageSchedule, ProxySchedule, Schedule, proxy_order
from .errors import UserError
from .model import Params, check_mixture, mixture_bits, param_count
from .orders import DecodingOrder


class EntropyParameters(nn.Module):
    """[h, ctx] → (means, scales) with 1×1 convolutions (widths as in Minnen et al.); with
    ``mixture`` K > 1 the last layer gives 3·K·M channels instead of 2·M: K weight logits, K means
    and K scales per latent (:func:`orderopt.model.param_count`), everything else the same."""

    def __init__(self, latent_channels: int, hyper_channels: int, ctx_channels: int, mixture: int = 1):
        super().__init__()
        m = latent_channels
        self.mixture, self.num_params = check_mixture(mixture), param_count(mixture)
        w1, w2 = m * 10 // 3, m * 8 // 3
        self.hyper_in = nn.Conv2d(hyper_channels, w1, 1)
        self.ctx_in = nn.Conv2d(ctx_channels, w1, 1, bias=False)
        self.rest = nn.Sequential(
            nn.LeakyReLU(inplace=False),
            nn.Conv2d(w1, w2, 1),
            nn.LeakyReLU(inplace=False),
            nn.Conv2d(w2, self.num_params * m, 1),
        )

    @property
    def width(self) -> int:
        return self.hyper_in.out_channels

    def tail(self, pre: torch.Tensor) -> Params:
        """From the first layer's pre-activation (B, D, H, W) to (means, scales), or the
        mixture's params."""
        return tuple(self.rest(pre).chunk(self.num_params, dim=1))

    def tail_matrices(self) -> dict[str, torch.Tensor]:
        """The weights of :meth:`tail_rows` as matrices: w2, b2, w3, b3."""
        _, c2, _, c3 = self.rest
        return {"w2": c2.weight[:, :, 0, 0], "b2": c2.bias, "w3": c3.weight[:, :, 0, 0], "b3": c3.bias}

    def tail_rows(
        self, pre: torch.Tensor, weights: dict[str, torch.Tensor] | None = None, inplace: bool = False
    ) -> Params:
        """:meth:`tail` for pre-activations laid out as rows (…, D): plain matrix products,
        faster than 1×1 convolutions for the cost table. Returns (…, M) means and scales (or
        the mixture's params). ``weights``: :meth:`tail_matrices` as given (cast to another
        dtype, say). ``inplace``: overwrite ``pre`` (no autograd; saves two large allocations
        per call)."""
        w = weights or self.tail_matrices()
        if inplace:
            h = F.leaky_relu_(F.linear(F.leaky_relu_(pre), w["w2"], w["b2"]))
        else:
            h = F.leaky_relu(F.linear(F.leaky_relu(pre), w["w2"], w["b2"]))
        return tuple(F.linear(h, w["w3"], w["b3"]).chunk(self.num_params, dim=-1))

    def forward(self, hyper: torch.Tensor, ctx: torch.Tensor) -> Params:
        return self.tail(self.hyper_in(hyper) + self.ctx_in(ctx))

    def at_latents(
        self, hyper: torch.Tensor, share: torch.Tensor | None, ctx: torch.Tensor, r: int, c: int, k: int
    ) -> Params:
        """(means, scales), each (B, M, rows, cols), of the latents at in-patch position (r, c)
        of a k×k patch, from their context features ``ctx`` (B, C, rows, cols) and h (or h's
        share ``hyper_in(hyper)``, which a decoder computes once per image). Plain matrix
        products: at one stage's latents, small 1×1 convolutions cost more in setup than in
        arithmetic."""
        b, _, rows, cols = ctx.shape
        h_part = share[:, :, r::k, c::k] if share is not None else self.hyper_in(hyper[:, :, r::k, c::k])
        weight = self.ctx_in.weight[:, :, 0, 0].expand(b, -1, -1)
        pre = torch.baddbmm(h_part.reshape(b, -1, rows * cols), weight, ctx.reshape(b, -1, rows * cols))
        return tuple(
            v.transpose(1, 2).reshape(b, -1, rows, cols) for v in self.tail_rows(pre.transpose(1, 2))
        )


class ContextModel(nn.Module):
    """Base class: ``forward(y_hat, hyper) -> (means, scales)`` (or a mixture's params); ``bits``
    gives per-element bits, ``loss_bits`` what training minimises, ``schedule`` its decoder's
    stages. Registered by ``kind`` (:data:`KINDS`): :func:`build` makes one from the ``spec`` a
    checkpoint records, so a new context model is one registered class. Every kind has an
    ``entropy`` network (:class:`EntropyParameters`), which holds K."""

    kind = ""
    takes_order = False  # whether it decodes any order given to it (the proxy) or its own
    entropy: EntropyParameters

    @classmethod
    def from_spec(cls, latent_channels: int, hyper_channels: int, **spec) -> ContextModel:
        """A new model of this kind from what :meth:`spec` recorded (``mixture``: K, default 1)."""
        raise NotImplementedError

    @property
    def mixture(self) -> int:
        """K, the Gaussians per latent (1: a plain Gaussian)."""
        return self.entropy.mixture

    def spec(self) -> dict:
        """What identifies the model besides its channels: its kind, and order or patch, and K
        when it is a mixture (K = 1 is left out, so that Gaussian models record what they
        always did, and a file without it is a Gaussian one)."""
        return self._spec()

    def _spec(self, **fields) -> dict:
        return {"kind": self.kind, **fields, **({"mixture": self.mixture} if self.mixture > 1 else {})}

    def loss_bits(
        self, y: torch.Tensor, h: torch.Tensor, rng: np.random.Generator, raster_fraction: float = 0.0
    ) -> torch.Tensor:
        """Mean bits per latent element of a training batch."""
        return self.bits(y, h).mean()

    def load_proxy_weights(self, pw: ProxyWeights) -> None:
        """Take the proxy's weights restricted to this model's masks (:func:`init_from_proxy`)."""
        raise ValueError(f"cannot initialise a {type(self).__name__} from a proxy")

    def weights_changed(self) -> None:
        """Drop whatever was derived from the weights (after they were written in place)."""

    def bits(self, y_hat: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Bits of every element of ŷ (B×M×H×W) under this context model."""
        return mixture_bits(y_hat, self(y_hat, hyper))

    def schedule(self, order: DecodingOrder | None, height: int, width: int, dtype=torch.float32) -> Schedule:
        """Its decoder's stages on an H×W latent grid (``order``: for models that take one), the
        context network's arithmetic in ``dtype`` (:mod:`orderopt.decoding`)."""
        raise NotImplementedError


KINDS: dict[str, type[ContextModel]] = {}


def register(cls: type[ContextModel]) -> type[ContextModel]:
    KINDS[cls.kind] = cls
    return cls


def build(kind: str, latent_channels: int, hyper_channels: int, **spec) -> ContextModel:
    """A context model by kind (``multistage`` with ``order``, ``autoregressive``, ``anyorder``
    with ``patch``, or any registered kind), each with ``mixture`` K (default 1)."""
    if kind not in KINDS:
        raise ValueError(f"unknown context model kind {kind!r}")
    return KINDS[kind].from_spec(latent_channels, hyper_channels, **spec)


def dedicated(
    spec: DecodingOrder | str, latent_channels: int, hyper_channels: int, mixture: int = 1
) -> ContextModel:
    """The dedicated model of a schedule: the multistage model of an order, or ``"autoregressive"``."""
    if isinstance(spec, DecodingOrder):
        return build("multistage", latent_channels, hyper_channels, order=str(spec), mixture=mixture)
    if spec == "autoregressive":
        return build("autoregressive", latent_channels, hyper_channels, mixture=mixture)
    raise ValueError(f"unknown dedicated model {spec!r}: give an order or 'autoregressive'")


@register
class MultistageContext(ContextModel):
    """The multistage context model of one decoding order.

    One masked ``kernel_size``² convolution (M → 2M) per in-patch position, the mask of
    position q from :meth:`DecodingOrder.kernel_mask`, and one entropy-parameter network
    shared by all stages.
    """

    kind = "multistage"

    @classmethod
    def from_spec(cls, latent_channels, hyper_channels, order=None, mixture=1, **_):
        return cls(DecodingOrder.parse(order), latent_channels, hyper_channels, mixture=mixture)

    def spec(self) -> dict:
        return self._spec(order=str(self.order))

    def __init__(
        self,
        order: DecodingOrder,
        latent_channels: int,
        hyper_channels: int,
        kernel_size: int = 5,
        mixture: int = 1,
    ):
        super().__init__()
        self.order = order
        self.kernel_size = kernel_size
        k, m = order.patch, latent_channels
        self.ctx_channels = 2 * m
        self.weight = nn.Parameter(torch.empty(k * k, 2 * m, m, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(k * k, 2 * m))
        for w in self.weight:
            nn.init.kaiming_uniform_(w, a=5**0.5)
        masks = torch.from_numpy(order.kernel_masks(kernel_size)).reshape(
            k * k, 1, 1, kernel_size, kernel_size
        )
        self.register_buffer("mask", masks.float(), persistent=False)
        self.entropy = EntropyParameters(m, hyper_channels, self.ctx_channels, mixture)
        self._cache: dict[str, tuple] = {}  # tensors derived from the weights, see _derived

    def _derived(self, name: str, build) -> torch.Tensor:
        """``build()``, a tensor derived from the weights; outside autograd it is cached until
        a parameter changes (in place too, as an optimizer step or load_state_dict does)."""
        if torch.is_grad_enabled():
            return build()
        key = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in self.parameters())
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            self._cache[name] = hit = (key, build())
        return hit[1]

    def masked_weight(self) -> torch.Tensor:
        """weight ⊙ mask (cached outside autograd: masking the k² kernels costs as much as the
        convolutions themselves)."""
        return self._derived("masked", lambda: self.weight * self.mask)

    def fused_weight(self) -> torch.Tensor:
        """The k² masked kernels, each placed at its in-patch offset (r, c) inside one
        (k+K−1)² kernel: (k²·2M, M, k+K−1, k+K−1), output channel q·2M + o."""
        k = self.order.patch

        def build() -> torch.Tensor:
            w = self.masked_weight()
            placed = [F.pad(w[q], (q % k, k - 1 - q % k, q // k, k - 1 - q // k)) for q in range(k * k)]
            return torch.stack(placed).flatten(0, 1)

        return self._derived("fused", build)

    def _pad_to_patches(self, y_hat: torch.Tensor) -> torch.Tensor:
        """ŷ zero-padded by K//2 all round, and on the bottom and right to whole patches."""
        k, half = self.order.patch, self.kernel_size // 2
        h, w = y_hat.shape[2:]
        return F.pad(y_hat, (half, half + (-w) % k, half, half + (-h) % k))

    @staticmethod
    def _interleave(grids: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Per-position grids (B, k, k, C, H/k, W/k) back to features (B, C, H, W), cropped."""
        b, k, _, c, hk, wk = grids.shape
        return grids.permute(0, 3, 4, 1, 5, 2).reshape(b, c, hk * k, wk * k)[:, :, :height, :width]

    def context_fused(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Context features as ONE convolution of stride k with the :meth:`fused_weight`
        kernel: (k+K−1)²/K² the FLOPs of one 5×5 convolution (2.6× for 4×4) in a single kernel
        launch. On an H100 it beats k² strided launches but not :meth:`context_unfolded`; kept
        as a measured alternative (``experiments/bench_context.py``)."""
        k = self.order.patch
        out = F.conv2d(self._pad_to_patches(y_hat), self.fused_weight(), self.bias.reshape(-1), stride=k)
        grids = out.view(y_hat.shape[0], k, k, self.ctx_channels, *out.shape[2:])
        return self._interleave(grids, *y_hat.shape[2:])

    def context_unfolded(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Context features as one batched matrix product: the K×K neighbourhoods of all
        latents (unfold), grouped by in-patch position, times each position's kernel. The same
        FLOPs as one convolution; on CPUs its backward pass is faster than that of k² tiny
        strided convolutions for 4×4 patches, so training uses it there."""
        k, b = self.order.patch, y_hat.shape[0]
        cols = F.unfold(self._pad_to_patches(y_hat), self.kernel_size)  # (B, M·K·K, k·hk · k·wk)
        hk, wk = -(-y_hat.shape[2] // k), -(-y_hat.shape[3] // k)
        cols = cols.view(b, -1, hk, k, wk, k).permute(3, 5, 0, 2, 4, 1).reshape(k * k, b * hk * wk, -1)
        out = torch.baddbmm(self.bias[:, None, :], cols, self.masked_weight().flatten(2).transpose(1, 2))
        grids = out.view(k, k, b, hk, wk, self.ctx_channels).permute(2, 0, 1, 5, 3, 4)
        return self._interleave(grids, *y_hat.shape[2:])

    def context(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Context features, by whichever exact form is fastest where it runs (all equal
        :meth:`context_naive`; ``experiments/bench_context.py`` times every form): on GPUs the
        unfolded matrix product (one launch, for inference and training); on CPUs the k²
        strided convolutions (fewest FLOPs), except when training patches of 4×4 and more,
        where their backward pass is slow and the unfolded form is faster."""
        if y_hat.is_cuda:
            return self.context_unfolded(y_hat)
        training = torch.is_grad_enabled() and (y_hat.requires_grad or self.weight.requires_grad)
        return (
            self.context_unfolded(y_hat)
            if training and self.order.patch >= 4
            else self.context_strided(y_hat)
        )

    def context_strided(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Context features, one strided convolution per in-patch position."""
        k, half = self.order.patch, self.kernel_size // 2
        b, _, h, w = y_hat.shape
        padded = F.pad(y_hat, (half, half, half, half))
        weights = self.masked_weight()
        ctx = y_hat.new_empty(b, self.ctx_channels, h, w)
        for q in range(k * k):
            r, c = divmod(q, k)
            if r >= h or c >= w:
                continue
            if not self.mask[q].any():  # first-stage positions see nothing: bias only
                ctx[:, :, r::k, c::k] = self.bias[q].view(1, -1, 1, 1)
            else:
                ctx[:, :, r::k, c::k] = F.conv2d(padded[:, :, r:, c:], weights[q], self.bias[q], stride=k)
        return ctx

    def context_naive(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Reference form: k² full masked convolutions, each kept only at its positions."""
        k, half = self.order.patch, self.kernel_size // 2
        ctx = y_hat.new_zeros(y_hat.shape[0], self.ctx_channels, *y_hat.shape[2:])
        for q in range(k * k):
            r, c = divmod(q, k)
            full = F.conv2d(y_hat, self.weight[q] * self.mask[q], self.bias[q], padding=half)
            ctx[:, :, r::k, c::k] = full[:, :, r::k, c::k]
        return ctx

    def forward(self, y_hat: torch.Tensor, hyper: torch.Tensor) -> Params:
        return self.entropy(hyper, self.context(y_hat))

    def weights_changed(self) -> None:
        self._cache.clear()

    def load_proxy_weights(self, pw: ProxyWeights) -> None:
        """Each position's mask of the proxy's ŷ weights, its 1_S and position terms as bias
        (:func:`init_from_proxy`)."""
        kp, ko = pw.patch, self.order.patch
        if kp % ko:
            raise ValueError(f"a {kp}×{kp} proxy cannot initialise a {ko}×{ko} order")
        for q in range(ko * ko):
            r, c = divmod(q, ko)
            mask = self.mask[q, 0, 0]
            self.weight[q] = pw.y * mask
            pos = torch.stack(
                [pw.position_term(rr, cc) for rr in range(r, kp, ko) for cc in range(c, kp, ko)]
            ).mean(0)
            self.bias[q] = pw.bias + (pw.mask * mask).sum(dim=(1, 2)) + pos

    def schedule(self, order, height, width, dtype=torch.float32) -> Schedule:
        """Its own order's stages (``order`` is ignored: the model is trained for one)."""
        return MultistageSchedule(self, height, width, dtype)

    def stage_params(
        self, y_hat: torch.Tensor, hyper: torch.Tensor, positions: list[tuple[int, int]]
    ) -> list[Params]:
        """(means, scales) (or a mixture's params) of the latents at the given in-patch positions
        only, each of shape (B, M, ⌈(H−r)/k⌉, ⌈(W−c)/k⌉), computed as a decoder computes them (see
        :class:`DecodingState`), with all of ŷ known."""
        state = DecodingState(self, hyper)
        state.load(y_hat)
        k, (b, m, height, width) = self.order.patch, y_hat.shape
        out = []
        for r, c in positions:
            grid = (b, -(-(height - r) // k), -(-(width - c) // k), m)
            out.append(tuple(v.reshape(grid).permute(0, 3, 1, 2) for v in state.params(r, c)))
        return out

    def tap_matrices(
        self, dtype: torch.dtype | None = None
    ) -> list[tuple[list[tuple[int, int]], torch.Tensor | None]]:
        """Per position q, the kernel taps that see decoded latents and the masked kernel at
        those taps as a (2M, T·M) matrix (tap-major), in ``dtype`` (None: no taps). Decoding
        multiplies by these only: 48% of the 5×5 taps for the paper's 4×4 order, 32% for 2×2."""
        dtype = dtype or self.weight.dtype

        def build() -> list[tuple[list[tuple[int, int]], torch.Tensor | None]]:
            w, out = self.masked_weight(), []
            for q in range(self.order.patch**2):
                taps = [tuple(t) for t in self.mask[q, 0, 0].nonzero().tolist()]
                matrix = torch.stack([w[q][:, :, i, j] for i, j in taps], 1).flatten(1) if taps else None
                out.append((taps, matrix.to(dtype) if matrix is not None else None))
            return out

        return self._derived(f"taps-{dtype}", build)

    def entropy_weights(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The entropy network's weights as matrices, and each position's context bias, in
        ``dtype`` (cached outside autograd)."""
        dtype = dtype or self.weight.dtype

        def build() -> dict[str, torch.Tensor]:
            e = self.entropy
            weights = {
                "hyper_in": e.hyper_in.weight[:, :, 0, 0],
                "hyper_bias": e.hyper_in.bias,
                "ctx_in": e.ctx_in.weight[:, :, 0, 0],
                "bias": self.bias,
                **e.tail_matrices(),
            }
            return {name: v.to(dtype) for name, v in weights.items()}

        return self._derived(f"entropy-{dtype}", build)


def raster_mask(kernel_size: int = 5) -> torch.Tensor:
    """Mask A of a raster-scan causal convolution: rows above, and left of centre."""
    mask = torch.zeros(kernel_size, kernel_size)
    half = kernel_size // 2
    mask[:half] = 1
    mask[half, :half] = 1
    return mask


@register
class AutoregressiveContext(ContextModel):
    """Serial raster context over all H·W positions (Minnen et al. 2018), 5×5 mask A."""

    kind = "autoregressive"

    @classmethod
    def from_spec(cls, latent_channels, hyper_channels, mixture=1, **_):
        return cls(latent_channels, hyper_channels, mixture=mixture)

    def __init__(self, latent_channels: int, hyper_channels: int, kernel_size: int = 5, mixture: int = 1):
        super().__init__()
        m = latent_channels
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(m, 2 * m, kernel_size, padding=kernel_size // 2)
        self.register_buffer("mask", raster_mask(kernel_size)[None, None], persistent=False)
        self.entropy = EntropyParameters(m, hyper_channels, 2 * m, mixture)

    def context(self, y_hat: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y_hat, self.conv.weight * self.mask, self.conv.bias, padding=self.kernel_size // 2)

    def forward(self, y_hat: torch.Tensor, hyper: torch.Tensor) -> Params:
        return self.entropy(hyper, self.context(y_hat))

    def load_proxy_weights(self, pw: ProxyWeights) -> None:
        """The proxy's ŷ weights under the raster mask, its 1_S and position terms (averaged
        over positions) as bias (:func:`init_from_proxy`)."""
        mask = self.mask[0, 0]
        self.conv.weight.copy_(pw.y * mask)
        pos = torch.stack([pw.position_term(r, c) for r in range(pw.patch) for c in range(pw.patch)]).mean(0)
        self.conv.bias.copy_(pw.bias + (pw.mask * mask).sum(dim=(1, 2)) + pos)

    def schedule(self, order, height, width, dtype=torch.float32) -> Schedule:
        """Raster order, one latent position per stage (``order`` is ignored)."""
        return RasterSchedule(self, height, width, dtype)


class RasterSchedule(Schedule):
    """The autoregressive model: one latent position per stage, raster order (H·W stages).

    A serial decoder done properly, so that it does not flatter the multistage models:

    - h's share of the first entropy layer is computed once for all positions;
    - the masked convolution reads only its causal taps (12 of 25), and ŷ lives inside a
      zero-padded buffer, so no position pads or convolves;
    - the rows above a position are decoded before its row starts, so their 10 taps go through
      the convolution and the first entropy layer for the whole row at once (two matrix
      products per row); a position then adds its 2 left taps, folded through the first entropy
      layer into one matrix, and runs the rest of the entropy network: three matrix–vector
      products, less than half the arithmetic of the plain serial decoder.
    """

    def __init__(self, model: AutoregressiveContext, height: int, width: int, dtype=torch.float32):
        if dtype != model.conv.weight.dtype:
            model = copy.deepcopy(model).to(dtype)
        self.model, self.h, self.w, self.dtype = model, height, width, dtype
        self.num_stages, self.shape = height * width, (height, width)
        self.half = half = model.kernel_size // 2
        w = model.conv.weight  # (2M, M, K, K), mask A: rows < half, and row half left of centre
        self.w_above = w[:, :, :half].flatten(1)  # (2M, M·half·K)
        self.ctx_in = model.entropy.ctx_in.weight[:, :, 0, 0]
        self.left_in = self.ctx_in @ w[:, :, half, :half].flatten(1)  # (D, M·half)
        self._padded: torch.Tensor | None = None
        self._work: torch.Tensor | None = None  # _padded in dtype
        self._hyper: tuple[torch.Tensor, torch.Tensor] | None = None
        self._row: tuple[int, torch.Tensor] | None = None  # (i, first-layer pre-activations of row i)

    def new_latents(self, channels, device):
        half = self.half
        self._padded = torch.zeros(1, channels, self.h + 2 * half, self.w + 2 * half, device=device)
        self._work = self._padded if self.dtype == torch.float32 else self._padded.to(self.dtype)
        self._row = None
        return self._padded[:, :, half : half + self.h, half : half + self.w]

    def take(self, y, t):
        i, j = divmod(t, self.w)
        return y[0, :, i, j][None]

    def put(self, y, t, values):
        i, j = divmod(t, self.w)
        y[0, :, i, j] = values[0]
        if self._work is not self._padded:
            self._work[0, :, i + self.half, j + self.half] = values[0]

    def _row_pre(self, i: int) -> torch.Tensor:
        """(W, D): h's share plus the rows above through the convolution and the first entropy
        layer, for every position of row i (the rows above are decoded when row i starts)."""
        if self._row is None or self._row[0] != i:
            k, half = self.model.kernel_size, self.half
            above = self._work[0, :, i : i + half].unfold(2, k, 1)  # (M, half, W, K)
            x = above.permute(2, 0, 1, 3).reshape(self.w, -1)  # (W, M·half·K)
            ctx = F.linear(x, self.w_above, self.model.conv.bias)
            share = self._hyper[1][i * self.w : (i + 1) * self.w]
            self._row = (i, torch.addmm(share, ctx, self.ctx_in.t()))
        return self._row[1]

    def params(self, y, hyper, t):
        if self._padded is None or y._base is not self._padded:
            raise ValueError("RasterSchedule.params needs the latents from its new_latents()")
        if self._hyper is None or self._hyper[0] is not hyper:  # h's share, once per image
            share = self.model.entropy.hyper_in(hyper.to(self.dtype))
            self._hyper = (hyper, share[0].flatten(1).T.contiguous())
            self._row = None
        i, j = divmod(t, self.w)
        left = self._work[0, :, i + self.half, j : j + self.half].reshape(-1)
        params = self.model.entropy.tail_rows(torch.addmv(self._row_pre(i)[j], self.left_in, left))
        return tuple(v[None].float() for v in params)


def position_map(patch: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(H, W): the in-patch position r·k + c of every latent."""
    k = patch
    return (torch.arange(height, device=device)[:, None] % k) * k + (torch.arange(width, device=device) % k)


def position_onehot(patch: int, height: int, width: int) -> torch.Tensor:
    """(k², H, W): channel q is 1 where the in-patch position of the latent is q."""
    return F.one_hot(position_map(patch, height, width), patch * patch).permute(2, 0, 1).float()


def subset_mask(
    subset: int | Sequence[int] | torch.Tensor, patch: int, height: int, width: int, device=None
) -> torch.Tensor:
    """0/1 mask of the latents whose in-patch position is in the bitmask ``subset``: (H, W) for
    one bitmask, (B, H, W) for a sequence of them, built on ``device`` in one operation."""
    s = torch.as_tensor(subset, device=device)
    return ((s[..., None, None] >> position_map(patch, height, width, device)) & 1).float()


def random_subsets(patch: int, batch: int, rng: np.random.Generator) -> list[int]:
    """Decoded sets S as bitmasks, drawn as the first t positions of a random order with t
    uniform in 0..k²−1 (so every q ∉ S has a context that some order produces)."""
    n = patch * patch
    out = []
    for _ in range(batch):
        perm = rng.permutation(n)[: rng.integers(n)]
        out.append(int(sum(1 << int(p) for p in perm)))
    return out


@register
class AnyOrderContext(ContextModel):
    """The proxy ("any-order") context model of a k×k patch.

    Input: ŷ ⊙ 1_S, the mask 1_S and the one-hot in-patch position (k² channels), through one
    K×K convolution (receptive field as in the multistage models), then the entropy-parameter
    network with h. Decoded set S is a bitmask over the k² in-patch positions (bit r·k + c).
    """

    kind, takes_order = "anyorder", True

    @classmethod
    def from_spec(cls, latent_channels, hyper_channels, patch=None, mixture=1, **_):
        return cls(int(patch), latent_channels, hyper_channels, mixture=mixture)

    def spec(self) -> dict:
        return self._spec(patch=self.patch)

    def __init__(
        self, patch: int, latent_channels: int, hyper_channels: int, kernel_size: int = 5, mixture: int = 1
    ):
        super().__init__()
        self.patch = patch
        self.kernel_size = kernel_size
        m = latent_channels
        self.conv = nn.Conv2d(m + 1 + patch * patch, 2 * m, kernel_size, padding=kernel_size // 2)
        self.entropy = EntropyParameters(m, hyper_channels, 2 * m, mixture)

    def inputs(self, y_hat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stack [ŷ ⊙ mask, mask, one-hot position]; ``mask`` is (B, 1, H, W)."""
        b, _, h, w = y_hat.shape
        pos = position_onehot(self.patch, h, w).to(y_hat).expand(b, -1, -1, -1)
        return torch.cat([y_hat * mask, mask, pos], dim=1)

    def forward_masked(self, y_hat: torch.Tensor, hyper: torch.Tensor, mask: torch.Tensor) -> Params:
        """Gaussian parameters of every latent given the decoded latents ``mask`` (B, 1, H, W)."""
        return self.entropy(hyper, self.conv(self.inputs(y_hat, mask)))

    def stage_params(
        self,
        y_hat: torch.Tensor,
        hyper: torch.Tensor,
        mask: torch.Tensor,
        positions: list[tuple[int, int]],
        share: torch.Tensor | None = None,
    ) -> list[Params]:
        """:meth:`forward_masked` at the latents of the given in-patch positions only, each
        (B, M, ⌈(H−r)/k⌉, ⌈(W−c)/k⌉): what a decoder computes at one stage, one strided
        convolution per position, so that all stages together cost one pass, not k².
        ``share`` is ``entropy.hyper_in(hyper)``, once per image."""
        k, size = self.patch, self.kernel_size
        b, _, height, width = y_hat.shape
        x = F.pad(self.inputs(y_hat, mask), (size // 2,) * 4)
        out = []
        for r, c in positions:
            rows, cols = -(-(height - r) // k), -(-(width - c) // k)
            window = x[:, :, r : r + (rows - 1) * k + size, c : c + (cols - 1) * k + size]
            ctx = F.conv2d(window, self.conv.weight, self.conv.bias, stride=k)
            out.append(self.entropy.at_latents(hyper, share, ctx, r, c, k))
        return out

    def kernel_context(self, y_hat: torch.Tensor, kernel_mask: torch.Tensor) -> torch.Tensor:
        """Context features when every latent sees the same taps ``kernel_mask`` (K×K, 0/1),
        e.g. :func:`raster_mask`: the autoregressive schedule. Tap (dy, dx) of a latent is
        "decoded" exactly when the mask says so, and taps outside the image are not, as the
        mask channel's zero padding has it for decoded sets; the position channels are unmasked."""
        b, m, h, w = y_hat.shape
        weight = self.conv.weight.clone()
        weight[:, : m + 1] *= kernel_mask.to(weight)
        x = torch.cat(
            [
                y_hat,
                y_hat.new_ones(b, 1, h, w),
                position_onehot(self.patch, h, w).to(y_hat).expand(b, -1, -1, -1),
            ],
            1,
        )
        return F.conv2d(x, weight, self.conv.bias, padding=self.kernel_size // 2)

    def forward_kernel(self, y_hat: torch.Tensor, hyper: torch.Tensor, kernel_mask: torch.Tensor) -> Params:
        """Gaussian parameters of every latent under the same tap mask at every latent
        (:meth:`kernel_context`): the rate of the autoregressive schedule on the proxy's basis."""
        return self.entropy(hyper, self.kernel_context(y_hat, kernel_mask))

    def forward(self, y_hat: torch.Tensor, hyper: torch.Tensor, subset: int | torch.Tensor = 0) -> Params:
        """Parameters given the decoded set ``subset`` (bitmask int, or (B,) tensor of bitmasks)."""
        b, _, h, w = y_hat.shape
        subsets = torch.as_tensor(subset).reshape(-1)
        subsets = subsets.expand(b) if subsets.numel() == 1 else subsets
        mask = subset_mask(subsets, self.patch, h, w, y_hat.device)[:, None].to(y_hat)
        return self.forward_masked(y_hat, hyper, mask)

    def schedule(self, order, height, width, dtype=torch.float32) -> Schedule:
        """The stages of any ``order`` whose patch divides the proxy's, tiled to it."""
        if order is None:
            raise UserError("coding with the any-order proxy needs --order")
        if self.patch % order.patch:
            raise UserError(
                f"order {order} ({order.patch}×{order.patch}) does not tile the proxy's "
                f"{self.patch}×{self.patch} patch; use a proxy of a multiple of {order.patch}"
            )
        return ProxySchedule(self, proxy_order(order, self.patch), height, width, dtype)

    def loss_bits(self, y, h, rng, raster_fraction=0.0):
        """Mean bits per latent element over the undecoded latents. The first
        ``round(raster_fraction · B)`` crops train with the autoregressive context (the raster
        tap mask at every latent, all latents coded), the rest with random decoded sets of its
        patch (:func:`random_subsets`)."""
        n = int(round(raster_fraction * y.shape[0]))
        if 0 < raster_fraction < 1 and y.shape[0] > 1:  # both kinds in every batch, however small
            n = min(max(n, 1), y.shape[0] - 1)
        bits, count = y.new_zeros(()), 0
        if n:
            kernel = raster_mask(self.kernel_size).to(y)
            bits, count = mixture_bits(y[:n], self.forward_kernel(y[:n], h[:n], kernel)).sum(), y[:n].numel()
        if n < y.shape[0]:
            y, h = y[n:], h[n:]
            subsets = random_subsets(self.patch, y.shape[0], rng)
            mask = subset_mask(subsets, self.patch, *y.shape[2:], y.device)[:, None]
            todo = 1 - mask
            bits = bits + (mixture_bits(y, self.forward_masked(y, h, mask)) * todo).sum()
            count = count + todo.sum() * y.shape[1]
        return bits / count

    @torch.no_grad()
    def decompose(self, y_hat: torch.Tensor, hyper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split the first pre-activation into a part independent of S and one part per position.

        Returns ``base`` (B, D, H, W) and ``parts`` (k², B, D, H, W) with
        pre(S) = base + Σ_{p ∈ S} parts[p]: the convolution and the first 1×1 layer are linear
        in [ŷ ⊙ 1_S, 1_S]. ``self.entropy.tail(pre(S))`` then gives the parameters for S.
        """
        k, (b, _, h, w) = self.patch, y_hat.shape
        e = self.entropy
        zeros = y_hat.new_zeros(b, 1, h, w)
        empty = self.conv(self.inputs(y_hat, zeros))  # bias + position terms
        base = e.hyper_in(hyper) + e.ctx_in(empty)
        w_nobias = self.conv.weight
        parts = []
        for p in range(k * k):
            m = subset_mask(1 << p, k, h, w, y_hat.device).to(y_hat)[None, None].expand(b, 1, h, w)
            x = torch.cat([y_hat * m, m], dim=1)
            lin = F.conv2d(x, w_nobias[:, : x.shape[1]], None, padding=self.kernel_size // 2)
            parts.append(F.conv2d(lin, e.ctx_in.weight))
        return base, torch.stack(parts)


class ProxyWeights:
    """The proxy's convolution split as a dedicated model uses it: the ŷ weights, the 1_S
    weights and the one-hot position terms (what :func:`init_from_proxy` folds into biases)."""

    def __init__(self, proxy: AnyOrderContext):
        self.patch, self.kernel_size = kp, ks = proxy.patch, proxy.kernel_size
        m = proxy.conv.in_channels - 1 - kp * kp
        w = proxy.conv.weight  # (2M, M + 1 + kp², K, K)
        self.y, self.mask, self._pos = w[:, :m], w[:, m], w[:, m + 1 :]
        self.bias = proxy.conv.bias
        self._offsets = torch.arange(ks) - ks // 2

    def position_term(self, r: int, c: int) -> torch.Tensor:
        """Σ over taps of the one-hot weights, for a latent at proxy position (r, c)."""
        kp, ks = self.patch, self.kernel_size
        rows = (r + self._offsets) % kp
        cols = (c + self._offsets) % kp
        q = rows[:, None] * kp + cols[None, :]  # (K, K) proxy position of every tap
        return torch.gather(self._pos, 1, q.expand(self._pos.shape[0], 1, ks, ks)).sum(dim=(1, 2, 3))


@torch.no_grad()
def init_from_proxy(model: ContextModel, proxy: AnyOrderContext) -> None:
    """Start a dedicated model from the proxy's weights restricted to its masks.

    The proxy's convolution is linear in [ŷ ⊙ 1_S, 1_S, one-hot position]. For a multistage
    order whose patch divides the proxy's, 1_S around a latent at position q is exactly q's
    kernel mask, so the ŷ weights carry over under the mask and the 1_S and position terms fold
    into q's bias: away from the image borders the initialised model equals the proxy
    evaluated along the order (position terms are averaged where the proxy's patch is larger).
    The autoregressive model gets the same with its raster mask, averaged over positions. The
    entropy-parameter network is copied. Fine-tuning from here converges in far fewer steps
    than from scratch, and models of different orders share one starting point. A model kind
    takes part by implementing ``load_proxy_weights``.
    """
    if model.kernel_size != proxy.kernel_size:
        raise ValueError("the proxy and the dedicated model have different kernel sizes")
    if model.mixture != proxy.mixture:
        raise ValueError(
            f"the proxy predicts mixtures of K = {proxy.mixture}, the dedicated model of K = {model.mixture}"
        )
    model.load_proxy_weights(ProxyWeights(proxy))
    model.entropy.load_state_dict(proxy.entropy.state_dict())
    model.weights_changed()
