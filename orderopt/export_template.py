"""Template of the file ``python -m orderopt.export`` writes (``multistage_context.py``).

It is real, linted code so that the exported module is too; :mod:`orderopt.export` replaces
this docstring and the constants between the two marker comments, and copies the rest as it
is. It must import nothing but torch: users drop the exported file into their own codec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# <exported constants>
ORDER = "0,1;2,3"  # the decoding order, rows separated by ";"
STAGES = ((0, 1), (2, 3))  # STAGES[row][col]: the stage of in-patch position (row, col)
LATENT_CHANNELS = 192  # M, the channels of ŷ
HYPER_CHANNELS = 384  # the channels of h = h_s(ẑ)
KERNEL_SIZE = 5
# </exported constants>

Tensor = torch.Tensor
# encode(stage, y, means, scales) -> ŷ of the stage; decode(stage, means, scales) -> ŷ of the stage
EncodeFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]
DecodeFn = Callable[[int, Tensor, Tensor], Tensor]


def context_mask(stages: Sequence[Sequence[int]], row: int, col: int, kernel_size: int = 5) -> Tensor:
    """The K×K context mask of in-patch position (row, col): tap (dy, dx) from the centre is
    visible iff in-patch position ((row + dy) mod k, (col + dx) mod k) has an earlier stage.
    Taps that fall into neighbouring patches see them through the same rule, since every patch
    decodes its stages at the same time."""
    k, half = len(stages), kernel_size // 2
    own = stages[row][col]
    return torch.tensor(
        [
            [stages[(row + dy) % k][(col + dx) % k] < own for dx in range(-half, half + 1)]
            for dy in range(-half, half + 1)
        ]
    )


class MaskedConv2d(nn.Conv2d):
    """A K×K convolution whose kernel is multiplied by a fixed 0/1 mask (a buffer, saved in the
    state dict): the taps of latents that are not decoded yet have weight zero. Unlike
    CompressAI's ``MaskedConv2d`` it never writes the mask into ``weight``."""

    def __init__(self, in_channels: int, out_channels: int, mask: Tensor, stride: int = 1):
        super().__init__(in_channels, out_channels, mask.shape[-1], stride=stride)
        self.register_buffer("mask", mask.to(self.weight.dtype).reshape(1, 1, *mask.shape[-2:]))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """Refuse weights trained for another decoding order (their masks differ from ours)."""
        mask = state_dict.get(prefix + "mask")
        if mask is not None and not torch.equal(mask.to(self.mask).reshape(self.mask.shape), self.mask):
            errors.append(f"{prefix}mask differs: these weights belong to another decoding order")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


class EntropyParameters(nn.Module):
    """[h, ctx] → (means, scales) with 1×1 convolutions, the widths of Minnen et al. 2018.

    The first layer on ``torch.cat([h, ctx], 1)`` is written as two convolutions summed,
    ``hyper_in(h) + ctx_in(ctx)``: the same linear map as CompressAI's
    ``entropy_parameters[0]`` (weight ``torch.cat([hyper_in.weight, ctx_in.weight], 1)``), kept
    split to compute exactly what orderopt computes.
    """

    def __init__(self, latent_channels: int, hyper_channels: int):
        super().__init__()
        m = latent_channels
        w1, w2 = m * 10 // 3, m * 8 // 3
        self.hyper_in = nn.Conv2d(hyper_channels, w1, 1)
        self.ctx_in = nn.Conv2d(2 * m, w1, 1, bias=False)
        self.rest = nn.Sequential(
            nn.LeakyReLU(), nn.Conv2d(w1, w2, 1), nn.LeakyReLU(), nn.Conv2d(w2, 2 * m, 1)
        )

    def forward(self, hyper: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        means, scales = self.rest(self.hyper_in(hyper) + self.ctx_in(ctx)).chunk(2, dim=1)
        return means, scales


class MultistageContextModel(nn.Module):
    """Means and scales of every latent of ŷ from the latents of earlier stages and h.

    One masked K×K convolution (M → 2M) per in-patch position, ``context_prediction[r·k + c]``,
    applied with stride k to exactly the latents of that position; one entropy-parameter
    network shared by all. ``forward`` is the one-pass form (all of ŷ known: training, rate);
    ``compress`` and ``decompress`` are the stage loop around an entropy coder given as a
    callback. Each stage's latents are laid out as (B, M, n): the latents of each of the
    stage's positions in raster order, the positions in row-major order (``stage_positions``).
    """

    def __init__(
        self,
        latent_channels: int = LATENT_CHANNELS,
        hyper_channels: int = HYPER_CHANNELS,
        stages: Sequence[Sequence[int]] = STAGES,
        kernel_size: int = KERNEL_SIZE,
    ):
        super().__init__()
        self.stages = tuple(tuple(int(s) for s in row) for row in stages)
        self.patch = k = len(self.stages)
        self.num_stages = 1 + max(max(row) for row in self.stages)
        self.latent_channels, self.kernel_size = latent_channels, kernel_size
        self.context_prediction = nn.ModuleList(
            MaskedConv2d(
                latent_channels, 2 * latent_channels, context_mask(self.stages, r, c, kernel_size), k
            )
            for r in range(k)
            for c in range(k)
        )
        self.entropy_parameters = EntropyParameters(latent_channels, hyper_channels)

    def stage_positions(self, stage: int) -> list[tuple[int, int]]:
        """In-patch positions (row, col) that ``stage`` decodes, row-major."""
        k = self.patch
        return [(r, c) for r in range(k) for c in range(k) if self.stages[r][c] == stage]

    def stage_masks(self, height: int, width: int) -> Tensor:
        """(T, H, W) bool: the latents each stage decodes on an H×W latent grid."""
        k = self.patch
        rows = torch.arange(height)[:, None] % k
        cols = torch.arange(width)[None, :] % k
        stage_map = torch.tensor(self.stages)[rows, cols]
        return stage_map[None] == torch.arange(self.num_stages)[:, None, None]

    def _position_params(self, padded: Tensor, hyper: Tensor, r: int, c: int) -> tuple[Tensor, Tensor]:
        """(means, scales) at the latents of in-patch position (r, c), each (B, M, ⌈(H−r)/k⌉,
        ⌈(W−c)/k⌉), from ŷ zero-padded by K//2 (only its earlier stages matter)."""
        k = self.patch
        ctx = self.context_prediction[r * k + c](padded[:, :, r:, c:])
        return self.entropy_parameters(hyper[:, :, r::k, c::k], ctx)

    def _pad(self, y_hat: Tensor, hyper: Tensor) -> Tensor:
        if y_hat.dim() != 4 or hyper.dim() != 4 or y_hat.shape[2:] != hyper.shape[2:]:
            raise ValueError(f"ŷ {tuple(y_hat.shape)} and h {tuple(hyper.shape)} need the same B×·×H×W")
        return F.pad(y_hat, (self.kernel_size // 2,) * 4)

    def forward(self, y_hat: Tensor, hyper: Tensor) -> tuple[Tensor, Tensor]:
        """(means, scales), each (B, M, H, W), of every latent, all of ŷ known: one strided
        masked convolution per in-patch position, as the decoder computes them stage by stage."""
        padded, k = self._pad(y_hat, hyper), self.patch
        b, m, height, width = y_hat.shape
        means, scales = y_hat.new_empty(b, m, height, width), y_hat.new_empty(b, m, height, width)
        for r in range(min(k, height)):
            for c in range(min(k, width)):
                means[:, :, r::k, c::k], scales[:, :, r::k, c::k] = self._position_params(padded, hyper, r, c)
        return means, scales

    def gather_stage(self, y: Tensor, stage: int) -> Tensor:
        """The latents of ``stage`` of y (B, M, H, W) as (B, M, n)."""
        k = self.patch
        return torch.cat([y[:, :, r::k, c::k].flatten(2) for r, c in self.stage_positions(stage)], 2)

    def scatter_stage(self, y: Tensor, stage: int, values: Tensor) -> None:
        """Write the (B, M, n) ``values`` of ``stage`` into y (B, M, H, W), in place."""
        k, start = self.patch, 0
        for r, c in self.stage_positions(stage):
            part = y[:, :, r::k, c::k]
            n = part.shape[2] * part.shape[3]
            part.copy_(values[:, :, start : start + n].reshape(part.shape))
            start += n
        if start != values.shape[2]:
            raise ValueError(f"stage {stage} has {start} latents per channel, got {values.shape[2]}")

    def stage_params(self, y_hat: Tensor, hyper: Tensor, stage: int) -> tuple[Tensor, Tensor]:
        """(means, scales), each (B, M, n), of the latents of ``stage`` from the earlier stages of
        ``y_hat`` (the later ones are never read: their weights are masked to zero)."""
        padded, (b, m, height, width) = self._pad(y_hat, hyper), y_hat.shape
        inside = [(r, c) for r, c in self.stage_positions(stage) if r < height and c < width]
        out = [self._position_params(padded, hyper, r, c) for r, c in inside]
        if not out:  # a latent smaller than the patch lacks this stage
            return y_hat.new_zeros(b, m, 0), y_hat.new_zeros(b, m, 0)
        return torch.cat([v.flatten(2) for v, _ in out], 2), torch.cat([s.flatten(2) for _, s in out], 2)

    @torch.no_grad()
    def compress(self, y: Tensor, hyper: Tensor, encode: EncodeFn) -> Tensor:
        """Encode y (B, M, H, W) stage by stage; returns ŷ, what :meth:`decompress` rebuilds.

        ``encode(stage, y_stage, means, scales)`` entropy-codes the stage's latents (each
        (B, M, n)) and returns their quantised values ŷ as the decoder will reconstruct them.
        """
        y_hat = torch.zeros_like(y)
        for t in range(self.num_stages):
            means, scales = self.stage_params(y_hat, hyper, t)
            self.scatter_stage(y_hat, t, encode(t, self.gather_stage(y, t), means, scales))
        return y_hat

    @torch.no_grad()
    def decompress(self, hyper: Tensor, decode: DecodeFn) -> Tensor:
        """Decode ŷ (B, M, H, W) stage by stage, H×W from ``hyper``: ``decode(stage, means,
        scales)`` returns the stage's latents (B, M, n) from the entropy coder."""
        b, _, height, width = hyper.shape
        y_hat = hyper.new_zeros(b, self.latent_channels, height, width)
        for t in range(self.num_stages):
            means, scales = self.stage_params(y_hat, hyper, t)
            self.scatter_stage(y_hat, t, decode(t, means, scales))
        return y_hat
