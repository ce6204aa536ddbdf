"""CompressAI checkpoints as base models: ``--model compressai:ARCH:PATH`` on every command.

ARCH is ``bmshj2018-hyperprior`` (CompressAI's ``ScaleHyperprior``, Ballé et al. 2018) or
``mbt2018-mean`` (``MeanScaleHyperprior``, Minnen et al. 2018 without its context model);
PATH a state dict as CompressAI saves it: ``torch.save(model.state_dict())``, the ``.pth.tar``
files of its model zoo, or the checkpoints of its ``examples/train.py`` (a dict with a
``"state_dict"`` key), with or without DataParallel's ``module.`` prefix. N and M come from the
weights. The file is read into orderopt's own modules (:class:`~orderopt.model.HyperpriorCodec`
and :class:`ScaleHyperpriorCodec` below) without importing CompressAI, whose releases pin
numpy < 2 and pull torchvision and torch-geometric; tests/test_compressai.py checks the mapping
against outputs CompressAI itself computed (experiments/make_compressai_fixture.py).

The scale hyperprior predicts scales only: its hyper features h = h_s(ẑ) are the M scales and
its means are zero, so context models trained on it condition on M channels instead of 2M.
The model's identity (``meta["hash"]``, which keys latent caches, context models and streams)
is :func:`~orderopt.model.state_hash` of the mapped weights: the same model read from a zoo
file or from a training checkpoint has the same hash.

Quantisation is orderopt's, not that of CompressAI's ``compress()``: orderopt codes ŷ = round(y)
and ẑ = round(z), so that every context model and decoding order codes the same ŷ and the
distortion never depends on the order. CompressAI codes ẑ = round(z − m) + m with the entropy
bottleneck's learned medians m (its ``quantiles``, unused here), and for mbt2018-mean
ŷ = round(y − μ) + μ with the means μ of h_s (for bmshj2018-hyperprior μ = 0: the same ŷ as
orderopt's). The networks and densities are the same, so the difference is only where the
quantisation grid sits; but the bpp and PSNR that ``orderopt.evaluate`` reports for a CompressAI
model are those of orderopt's quantisation and differ slightly from CompressAI's ``eval_model``
numbers for the same file. Compare orders and context models with each other within orderopt,
not with CompressAI's published curves.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .model import LIKELIHOOD_MIN, SCALE_MIN, FactorizedPrior, HyperpriorCodec, conv, deconv, state_hash

PREFIX = "compressai:"
PEDESTAL = 2.0**-36  # GDN's reparametrisation offset squared, in CompressAI as in orderopt
BETA_MIN = 1e-6


class ScaleHyperpriorCodec(HyperpriorCodec):
    """The scale hyperprior (bmshj2018-hyperprior): z = h_a(|y|) with ReLUs, and h = h_s(ẑ) are
    the Gaussians' scales (ReLU-ed, M channels) around means of zero."""

    def __init__(self, N: int = 128, M: int = 192):
        super().__init__(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, 3, 1), nn.ReLU(inplace=True), conv(N, N), nn.ReLU(inplace=True), conv(N, N)
        )
        self.h_s = nn.Sequential(
            deconv(N, N),
            nn.ReLU(inplace=True),
            deconv(N, N),
            nn.ReLU(inplace=True),
            conv(N, M, 3, 1),
            nn.ReLU(inplace=True),
        )

    def hyper_analysis(self, y: torch.Tensor) -> torch.Tensor:
        return self.h_a(torch.abs(y))

    @staticmethod
    def split_hyper(hyper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h = h_s(ẑ) holds the scales alone; the means are zero."""
        return torch.zeros_like(hyper), hyper


ARCHS: dict[str, type[HyperpriorCodec]] = {
    "bmshj2018-hyperprior": ScaleHyperpriorCodec,
    "mbt2018-mean": HyperpriorCodec,
}
DESCRIPTIONS = {
    "bmshj2018-hyperprior": "CompressAI bmshj2018-hyperprior (scale hyperprior)",
    "mbt2018-mean": "CompressAI mbt2018-mean (mean-scale hyperprior)",
}

# CompressAI-only entries: CDF tables and medians of its entropy coder (orderopt codes with its
# own), and the constants of its reparametrisations and bounds (checked against orderopt's).
_IGNORED = ("quantiles", "_offset", "_quantized_cdf", "_cdf_length", "target", "scale_table")
_CONSTANTS = {
    "entropy_bottleneck.likelihood_lower_bound.bound": LIKELIHOOD_MIN,
    "gaussian_conditional.likelihood_lower_bound.bound": LIKELIHOOD_MIN,
    "gaussian_conditional.lower_bound_scale.bound": SCALE_MIN,
    "gaussian_conditional.scale_bound": SCALE_MIN,
}
_GDN_CONSTANTS = {
    "beta_reparam.pedestal": PEDESTAL,
    "gamma_reparam.pedestal": PEDESTAL,
    "beta_reparam.lower_bound.bound": (BETA_MIN + PEDESTAL) ** 0.5,
    "gamma_reparam.lower_bound.bound": PEDESTAL**0.5,
}
_PRIOR_NAMES = {"matrices": "matrix", "biases": "bias", "factors": "factor"}


def parse_spec(spec: str) -> tuple[str, Path] | None:
    """(ARCH, PATH) of ``compressai:ARCH:PATH``, None for any other ``--model``."""
    if not spec.startswith(PREFIX):
        return None
    arch, _, path = spec[len(PREFIX) :].partition(":")
    example = f"e.g. {PREFIX}mbt2018-mean:mbt2018-mean-3-723404a8.pth.tar"
    if arch not in ARCHS:
        raise UserError(
            f"--model {spec}: unknown CompressAI architecture {arch!r}; give {PREFIX}ARCH:PATH with ARCH "
            f"one of {', '.join(ARCHS)} ({example})"
        )
    if not path:
        raise UserError(f"--model {spec} names no checkpoint file; give {PREFIX}ARCH:PATH ({example})")
    return arch, Path(path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a CompressAI file, unwrapped from ``{"state_dict": ...}`` and without
    a ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CompressAI checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # weights_only: tensors and plain containers only; a pickle that would run code is refused
            d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"CompressAI checkpoint {path} cannot be read ({type(err).__name__}): truncated, not a "
            "weights file, or holding objects other than tensors"
        ) from None
    if isinstance(d, dict) and isinstance(d.get("state_dict"), dict):
        d = d["state_dict"]
    if not isinstance(d, dict) or not all(isinstance(v, torch.Tensor) for v in d.values()):
        raise UserError(
            f"{path} is not a CompressAI state dict (a dict of tensors, or one under 'state_dict')"
        )
    return {k.removeprefix("module."): v for k, v in d.items()}


def looks_like_compressai(path: str | Path) -> bool:
    """Whether ``path`` holds a CompressAI-style state dict (to suggest ``compressai:ARCH:PATH``)."""
    try:
        return "g_a.0.weight" in read_state_dict(path)
    except UserError:
        return False


def _check_constant(path: Path, name: str, value: torch.Tensor, expected: float) -> None:
    if value.numel() != 1 or not math.isclose(float(value), expected, rel_tol=1e-5):
        got = value.flatten().tolist()
        raise UserError(
            f"CompressAI checkpoint {path}: {name} is {got}, orderopt's model uses {expected:g}; "
            "models with other bounds or reparametrisations are not supported"
        )


def map_state_dict(
    sd: dict[str, torch.Tensor], path: Path
) -> tuple[dict[str, torch.Tensor], tuple[int, ...] | None]:
    """CompressAI's names to orderopt's, with the entropy bottleneck's filter widths (None without
    its parameters). GDN's β and γ are stored the same way in both (the square roots of
    β + pedestal and γ + pedestal, lower bounded), so they map unchanged; the constants of that
    reparametrisation are checked."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, _, rest = key.partition(".")
        if key in _CONSTANTS:
            _check_constant(path, key, value, _CONSTANTS[key])
        elif module == "gaussian_conditional" or (module == "entropy_bottleneck" and rest in _IGNORED):
            continue
        elif module in ("g_a", "g_s") and rest.partition(".")[2] in _GDN_CONSTANTS:
            _check_constant(path, key, value, _GDN_CONSTANTS[rest.partition(".")[2]])
        elif module == "entropy_bottleneck":
            out[f"z_prior.{_prior_name(rest)}"] = value
        else:
            out[key] = value
    index = {int(k.rsplit(".", 1)[1]): k for k in out if re.fullmatch(r"z_prior\.matrices\.\d+", k)}
    matrices = [index[i] for i in sorted(index)]
    filters = tuple(int(out[k].shape[1]) for k in matrices[:-1]) if matrices else None
    return {k: v.float() for k, v in out.items()}, filters


def _prior_name(rest: str) -> str:
    """``matrices.0`` (CompressAI ≥ 1.2), ``_matrices.0`` (zoo files), ``_matrix0`` (1.1) → ``matrices.0``."""
    for plural, singular in _PRIOR_NAMES.items():
        for old in (f"_{plural}.", f"{plural}."):
            if rest.startswith(old):
                return f"{plural}.{rest[len(old) :]}"
        if rest.startswith(f"_{singular}") and rest[len(singular) + 1 :].isdigit():
            return f"{plural}.{rest[len(singular) + 1 :]}"
    return rest  # unknown: reported by load_state_dict as not fitting the architecture


def _guess_arch(sd: dict[str, torch.Tensor]) -> str | None:
    """The architecture the weights fit, to name it in an error."""
    if any(k.startswith(("context_prediction.", "entropy_parameters.")) for k in sd):
        return "mbt2018 (with its autoregressive context model: not supported)"
    try:
        m, out = sd["g_a.6.weight"].shape[0], sd["h_s.4.weight"].shape[0]
    except KeyError:
        return None
    return {m: "bmshj2018-hyperprior", 2 * m: "mbt2018-mean"}.get(out)


def load_compressai(arch: str, path: str | Path) -> tuple[HyperpriorCodec, dict]:
    """A CompressAI checkpoint of ``arch`` as an orderopt base model (eval mode, float32) and its
    metadata: ``arch`` (N, M), ``hash``, ``lmbda`` (None: not recorded in CompressAI's files),
    ``description`` and ``compressai`` (the architecture and file)."""
    path = Path(path)
    sd = read_state_dict(path)
    try:
        N, M = int(sd["g_a.0.weight"].shape[0]), int(sd["g_a.6.weight"].shape[0])
    except (KeyError, IndexError):
        raise UserError(
            f"{path} is not a CompressAI {arch} state dict: it lacks g_a.0.weight or g_a.6.weight"
        ) from None
    mapped, filters = map_state_dict(sd, path)
    model = ARCHS[arch](N, M)
    if filters is not None and filters != (3, 3, 3, 3):
        model.z_prior = FactorizedPrior(N, filters)
    try:
        model.load_state_dict(mapped)
    except RuntimeError as err:
        lines = [s.strip() for s in str(err).splitlines() if s.strip()]
        first = lines[1] if len(lines) > 1 else lines[0]
        guess = _guess_arch(sd)
        hint = f" (it looks like {guess})" if guess and guess != arch else ""
        raise UserError(
            f"CompressAI checkpoint {path} does not fit {arch} with N={N}, M={M}{hint}: {first}"
        ) from None
    model.eval()
    meta = {
        "arch": {"N": N, "M": M},
        "hash": state_hash(model.state_dict()),
        "lmbda": None,
        "training": {},
        "description": f"{DESCRIPTIONS[arch]}, N={N}, M={M}, from {path.name}",
        "compressai": {"arch": arch, "path": str(path)},
    }
    return model, meta
