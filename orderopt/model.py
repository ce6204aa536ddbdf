"""The base codec: the mean-scale hyperprior of Minnen et al. 2018 without its context model.

g_a/g_s are 4-layer convolutional transforms with GDN; h_a/h_s the hyper transforms; ẑ has a
factorized prior; ŷ a Gaussian conditional whose mean and scale come from h = h_s(ẑ).
The context models of :mod:`orderopt.context` refine exactly these Gaussians, with h as input.

Quantisation: ŷ = round(y) and ẑ = round(z) (no mean offset), so that every context model
codes the same ŷ and an order never changes the distortion. Training uses additive uniform
noise for the rate and straight-through rounding for the synthesis input.

CompressAI checkpoints (its mean-scale and scale hyperpriors) load into these modules too:
:mod:`orderopt.compressai`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .files import load_versioned

FORMAT = "orderopt-base"
VERSION = 1
SCALE_MIN = 0.11
LIKELIHOOD_MIN = 1e-9
WEIGHTS_DIR = Path(__file__).parent / "weights"
QUALITIES = {1: 0.0018, 2: 0.0067, 3: 0.0250}  # shipped quality -> λ (CompressAI's qualities 1, 3, 5)
DEFAULT_QUALITY = 2


def shipped_weights(name: str = "base", quality: int | None = None) -> Path:
    """Path of a shipped weights file (``base``, ``proxy_k2``, ``proxy_k4``, ``autoregressive``)
    of a quality (default: the middle one)."""
    q = DEFAULT_QUALITY if quality is None else quality
    if q not in QUALITIES:
        raise UserError(f"--quality {q} is not shipped; choose one of {', '.join(map(str, QUALITIES))}")
    return WEIGHTS_DIR / f"q{q}" / f"{name}.pt"


SHIPPED = shipped_weights()


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it pushes x up (Ballé's trick)."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


class GDN(nn.Module):
    """Generalized divisive normalization (Ballé et al. 2016); ``inverse=True`` gives IGDN."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.pedestal = 2.0**-36
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.gamma_bound = self.pedestal**0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = lower_bound(self.beta, self.beta_bound) ** 2 - self.pedestal
        gamma = lower_bound(self.gamma, self.gamma_bound) ** 2 - self.pedestal
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)


def conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


class FactorizedPrior(nn.Module):
    """Per-channel learned density for ẑ (Ballé et al. 2018, "entropy bottleneck")."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """Logit of the CDF at values ``v`` of shape (C, 1, n)."""
        for i, (m, b) in enumerate(zip(self.matrices, self.biases, strict=True)):
            v = torch.matmul(F.softplus(m), v) + b
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """P(bin of width 1 around z) for z of shape (B, C, H, W)."""
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        lik = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        lik = lik.reshape(c, b, h, w).permute(1, 0, 2, 3)
        return lower_bound(lik, LIKELIHOOD_MIN)


def _gaussian_bin(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(integer bin of ŷ) under N(mean, scale²), the scale bounded below, the probability not:
    a Gaussian's, or one component's of a mixture."""
    scale = lower_bound(scale, SCALE_MIN)
    v = torch.abs(y - mean)  # symmetric: the upper tail's erfc is accurate far from the mean
    upper = 0.5 * torch.erfc(-(0.5 - v) / (scale * math.sqrt(2)))
    lower = 0.5 * torch.erfc(-(-0.5 - v) / (scale * math.sqrt(2)))
    return upper - lower


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(integer bin of ŷ) under N(mean, scale²): the discretized Gaussian of the codec."""
    return lower_bound(_gaussian_bin(y, mean, scale), LIKELIHOOD_MIN)


def gaussian_bits(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Bits of every element of ŷ under N(mean, scale²) (elementwise, same shape as y)."""
    return -torch.log2(gaussian_likelihood(y, mean, scale))


# --- the context models' distributions: a Gaussian, or a mixture of K Gaussians ------------
# A context model predicts, per latent, a tuple of tensors shaped like ŷ ("params"): (means,
# scales) for a Gaussian (K = 1, the default), and for a mixture of K Gaussians (Lin et al. 2023
# use K = 3) K weight logits, K means and K scales, in that order. Every consumer (training
# loss, cost oracle, schedules, coders) handles params as a tuple of like-shaped tensors, so
# that only the functions below know what the entries mean.
Params = tuple[torch.Tensor, ...]


def check_mixture(mixture) -> int:
    """K as an int ≥ 1; a one-line error otherwise (a bad --mixture, or a damaged checkpoint)."""
    if isinstance(mixture, bool) or not isinstance(mixture, int | np.integer) or mixture < 1:
        raise UserError(
            f"the number of mixture components K must be an integer of at least 1, not {mixture!r}"
        )
    return int(mixture)


def param_count(mixture: int) -> int:
    """Tensors per latent of a K-component model: 2 for a Gaussian, 3·K for a mixture."""
    return 2 if check_mixture(mixture) == 1 else 3 * mixture


def mixture_size(params: Params | tuple[np.ndarray, ...]) -> int:
    """K of a params tuple (:func:`param_count`'s inverse)."""
    if len(params) == 2:
        return 1
    if len(params) < 6 or len(params) % 3:
        raise ValueError(f"{len(params)} parameter tensors are neither a Gaussian's nor a mixture's")
    return len(params) // 3


def mixture_likelihood(y: torch.Tensor, params: Params) -> torch.Tensor:
    """P(integer bin of ŷ) under a context model's params: the discretized Gaussian
    (:func:`gaussian_likelihood`, bit for bit) or Σ_k softmax(w)_k · P_k(bin), each component's
    scale and the total bounded below as for the Gaussian. One function for the training loss,
    the cost oracle and the codec's estimate; :func:`mixture_table` is the same formula for the
    mixture coder's probability tables."""
    k = mixture_size(params)
    if k == 1:
        return gaussian_likelihood(y, *params)
    weights = torch.softmax(torch.stack(params[:k]), dim=0)
    total = sum(weights[i] * _gaussian_bin(y, params[k + i], params[2 * k + i]) for i in range(k))
    return lower_bound(total, LIKELIHOOD_MIN)


def mixture_table(params: tuple[np.ndarray, ...], lo: int, hi: int) -> np.ndarray:
    """(n, hi−lo+1) float64: :func:`mixture_likelihood` of the symbols lo..hi for n latents whose
    params are flat float64 arrays, the same formula element by element in numpy and scipy. A
    coder's tables must come out the same wherever and however they are computed (encoder and
    decoder); torch's float64 kernels round by thread count and position within a tensor, these
    scalar element-wise loops do not."""
    from scipy.special import erfc

    k = mixture_size(params)
    y = np.arange(lo, hi + 1, dtype=np.float64)[None, :]
    if k == 1:
        logits, means, scales = [np.zeros_like(params[0])], [params[0]], [params[1]]
    else:
        logits, means, scales = params[:k], params[k : 2 * k], params[2 * k :]
    top = np.max(logits, axis=0)
    weights = [np.exp(w - top) for w in logits]
    norm = sum(weights)
    total = np.zeros((len(params[0]), y.shape[1]))
    for w, mean, scale in zip(weights, means, scales, strict=True):
        v = np.abs(y - mean[:, None])
        s = np.maximum(scale, SCALE_MIN)[:, None] * math.sqrt(2)
        total += (w / norm)[:, None] * (0.5 * erfc((v - 0.5) / s) - 0.5 * erfc((v + 0.5) / s))
    return np.maximum(total, LIKELIHOOD_MIN)


def mixture_bits(y: torch.Tensor, params: Params) -> torch.Tensor:
    """Bits of every element of ŷ under a context model's params (elementwise, y's shape)."""
    return -torch.log2(mixture_likelihood(y, params))


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


@dataclass(frozen=True)
class Analysis:
    """What the context models need of an image: ŷ, h = h_s(ẑ) and the bits of ẑ."""

    y_hat: torch.Tensor  # (B, M, h, w), integers stored as float
    hyper: torch.Tensor  # (B, 2M, h, w): Gaussian parameters predicted from ẑ alone
    z_hat: torch.Tensor  # (B, N, h/4, w/4)
    z_bits: torch.Tensor  # (B,) bits of ẑ under the factorized prior


class HyperpriorCodec(nn.Module):
    """Mean-scale hyperprior codec (Minnen et al. 2018 without the autoregressive part)."""

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__()
        self.N, self.M = N, M
        self.g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, True), deconv(N, N), GDN(N, True), deconv(N, N), GDN(N, True), deconv(N, 3)
        )
        self.h_a = nn.Sequential(
            conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N)
        )
        self.h_s = nn.Sequential(
            deconv(N, M),
            nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2),
            nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, 3, 1),
        )
        self.z_prior = FactorizedPrior(N)

    @property
    def arch(self) -> dict[str, int]:
        return {"N": self.N, "M": self.M}

    def hyper_analysis(self, y: torch.Tensor) -> torch.Tensor:
        """z from y (the scale hyperprior of :mod:`orderopt.compressai` analyses |y| instead)."""
        return self.h_a(y)

    @staticmethod
    def split_hyper(hyper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h = h_s(ẑ) holds (scales, means) in its two channel halves."""
        scales, means = hyper.chunk(2, dim=1)
        return means, scales

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass: noisy rates, straight-through rounded synthesis input."""
        y = self.g_a(x).float()
        z = self.hyper_analysis(y).float()
        hyper = self.h_s(ste_round(z)).float()
        x_hat = self.g_s(ste_round(y)).float()
        # Likelihoods in float32 even under bfloat16 autocast: the transforms tolerate 8-bit
        # mantissas, the rate terms (differences of CDFs) do not.
        with torch.autocast(x.device.type, enabled=False):
            z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5) if self.training else torch.round(z)
            z_lik = self.z_prior.likelihood(z_noisy)
            means, scales = self.split_hyper(hyper)
            y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else torch.round(y)
            y_lik = gaussian_likelihood(y_noisy, means, scales)
        return {"x_hat": x_hat, "y_likelihood": y_lik, "z_likelihood": z_lik}

    @torch.no_grad()
    def analyze(self, x: torch.Tensor) -> Analysis:
        """Quantized latents of padded images x (B, 3, H, W), H and W multiples of 64."""
        y = self.g_a(x)
        z_hat = torch.round(self.hyper_analysis(y))
        z_bits = -torch.log2(self.z_prior.likelihood(z_hat)).flatten(1).sum(1)
        return Analysis(torch.round(y), self.h_s(z_hat), z_hat, z_bits)

    @torch.no_grad()
    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """g_s(ŷ) clamped to [0, 1], always computed channels-last (faster on the CPU than the
        default layout: results/retired.md), whatever ŷ's layout: the two
        round differently, and every decoder of ŷ must reconstruct the same pixels. A copy, not
        ``contiguous``: oneDNN picks its kernels by the exact strides, even a lone batch's."""
        return self.g_s(y_hat.clone(memory_format=torch.channels_last)).clamp_(0, 1)


def rd_loss(out: dict[str, torch.Tensor], x: torch.Tensor, lmbda: float) -> dict[str, torch.Tensor]:
    """λ·255²·MSE + bpp (CompressAI's convention for λ)."""
    num_pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp_y = -torch.log2(out["y_likelihood"]).sum() / num_pixels
    bpp_z = -torch.log2(out["z_likelihood"]).sum() / num_pixels
    mse = F.mse_loss(out["x_hat"], x)
    return {"loss": lmbda * 255**2 * mse + bpp_y + bpp_z, "bpp": bpp_y + bpp_z, "mse": mse}


# --- checkpoints ------------------------------------------------------------------------
def state_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict (names, dtypes and values), 16 hex digits."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def make_checkpoint(
    model: HyperpriorCodec, lmbda: float, training: dict[str, Any], half: bool = False
) -> dict:
    """A versioned checkpoint dict: architecture, λ, training record, weights and their hash."""
    sd = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "lmbda": lmbda,
        "training": training,
        "state_dict": sd,
        "hash": state_hash(sd),
    }


def read_checkpoint(path: str | Path) -> dict:
    """Load and check a checkpoint file; clear errors for missing, corrupt or foreign files."""
    ckpt = load_versioned(
        path,
        FORMAT,
        VERSION,
        "base-model checkpoint",
        "train one with `python -m orderopt.train base` or leave out --model to use the shipped model",
        required=("arch", "lmbda", "training", "state_dict", "hash"),
    )
    if state_hash(ckpt["state_dict"]) != ckpt.get("hash"):
        raise UserError(f"checkpoint {path} is corrupt: its weights do not match the recorded hash")
    return ckpt


def load_model(path: str | Path | None = None, quality: int | None = None) -> tuple[HyperpriorCodec, dict]:
    """The base model of a checkpoint (the shipped one of ``quality`` when ``path`` is None), in
    eval mode and float32, with the checkpoint's metadata (everything but the weights).
    ``compressai:ARCH:PATH`` reads a CompressAI checkpoint instead (:mod:`orderopt.compressai`)."""
    from . import compressai

    spec = compressai.parse_spec(str(path)) if path is not None else None
    if spec is not None:
        return compressai.load_compressai(*spec)
    try:
        ckpt = read_checkpoint(shipped_weights("base", quality) if path is None else path)
    except UserError as err:
        if path is not None and "is not an orderopt" in str(err) and compressai.looks_like_compressai(path):
            raise UserError(
                f"{err}; for a CompressAI checkpoint pass --model compressai:ARCH:{path}"
            ) from None
        raise
    arch = ckpt["arch"]
    model = HyperpriorCodec(int(arch["N"]), int(arch["M"]))
    try:
        model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise UserError(f"checkpoint {path} does not fit its recorded architecture {arch}: {first}") from None
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")}
    return model.eval(), meta


def add_model_options(parser, what: str = "") -> None:
    """``--model`` and ``--quality``, shared by every command that runs the base codec."""
    parser.add_argument(
        "--model",
        help="base-model checkpoint, or a CompressAI one as compressai:ARCH:PATH (ARCH: "
        f"bmshj2018-hyperprior or mbt2018-mean){what} (default: the shipped model of --quality)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        choices=sorted(QUALITIES),
        help="shipped model (and its context models) of this quality: "
        + ", ".join(f"{q} (λ = {lm})" for q, lm in QUALITIES.items())
        + f" (default: {DEFAULT_QUALITY}; not with --model)",
    )


def check_model_options(args) -> None:
    """One-line error for ``--model`` together with ``--quality``."""
    if getattr(args, "model", None) and getattr(args, "quality", None) is not None:
        raise UserError("give --model or --quality, not both (--quality picks a shipped model)")


def shipped_quality(model_hash: str) -> int | None:
    """The shipped quality whose base model has this hash, if any (e.g. to decode a stream)."""
    for q in QUALITIES:
        path = shipped_weights("base", q)
        if path.is_file() and read_checkpoint(path).get("hash") == model_hash:
            return q
    return None


def num_parameters(model: nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in model.parameters()))
