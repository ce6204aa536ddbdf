"""Make the CompressAI fixture of tests/test_compressai.py: tiny CompressAI models and their outputs.

orderopt reads CompressAI checkpoints without importing CompressAI (:mod:`orderopt.compressai`).
This script, run once in a throwaway environment WITH CompressAI, makes what proves that
mapping: ``bmshj2018-hyperprior`` (``ScaleHyperprior``) and ``mbt2018-mean``
(``MeanScaleHyperprior``) with N = 8, M = 12, randomly initialised at a fixed seed, their state
dicts exactly as CompressAI saves them, and CompressAI's own outputs on a fixed 64×128 image.

The throwaway environment (CompressAI 1.2.8 pins numpy < 2 and pulls torchvision and
torch-geometric, so it stays out of orderopt's own), on Python 3.11.7, Linux x86-64::

    python3 -m venv /tmp/cai-venv
    /tmp/cai-venv/bin/pip install torch==2.13.0         # the CPU build, 2.13.0+cpu
    /tmp/cai-venv/bin/pip install --no-deps compressai==1.2.8
    # what `import compressai.models, compressai.zoo` really needs, found one import error at a time:
    /tmp/cai-venv/bin/pip install --no-deps numpy==1.26.4 pandas==2.2.3 scipy==1.17.1 \
        pillow==13.0.0 einops==0.8.2 pytorch-msssim==1.0.0 tqdm==4.70.1 torch-geometric==2.8.1 \
        xxhash==4.1.0 psutil==7.2.2 requests==2.34.2 urllib3==2.8.0 idna==3.20 \
        certifi==2026.10.19.post1 python-dateutil==4.0.0 six==1.17.0 pytz==2026.6 tzdata==2026.6
    /tmp/cai-venv/bin/python experiments/make_compressai_fixture.py

torchvision is left out: its PyPI wheel (0.28.0, the one made for torch 2.13) links the CUDA
build of torch (``operator torchvision::nms does not exist`` under the CPU build), and
CompressAI imports it only to list its transforms in a registry. Without it, this script puts
an empty ``torchvision.transforms`` module in its place before importing CompressAI; the
models never touch it.

The weights are CompressAI's initialisation perturbed at random (fixed seed): at
initialisation GDN's γ is diagonal and the entropy bottleneck's factors are zero, so a
transposed γ or a dropped factor would pass unnoticed; some γ entries are negative, so that
the reparametrisation's lower bound is exercised too. g_a's last layer and every layer of h_a
and h_s are scaled up, so that ŷ and ẑ hold integers other than 0 and the scales are not all
below their bound.

Written to ``--out`` (default tests/data/compressai/):

* ``ARCH.pth``: ``torch.save(model.state_dict())`` after
  ``model.entropy_bottleneck.update(force=True)``, so that its CDF buffers come along as in a
  trained model's file (the Gaussian conditional's tables are left empty: 800 KB even at this
  size; orderopt ignores both);
* ``bmshj2018-hyperprior-zoo.pth.tar``: the same state dict named as the model zoo's files:
  the zoo's loader (``compressai.zoo.pretrained.load_pretrained``) renames
  ``entropy_bottleneck._matrices.i`` (also ``_biases``, ``_factors``), the names of
  CompressAI's first releases, to the current ones, so its published files hold those (as read
  from the loader: no zoo file can be downloaded here); the script checks that the zoo's own
  loading path gives back the same model. Saved in torch's legacy (pre-1.6, non-zip)
  serialisation, so that the tests read that format too;
* ``outputs.pt``: the input image (uint8, x = image / 255) and per architecture, from
  CompressAI's modules: y = g_a(x), z = h_a(y) (h_a(|y|) for the scale hyperprior),
  the hyper-synthesis output h_s(round(z)) (scales, then means for mbt2018-mean), x_hat =
  g_s(round(y)), the entropy bottleneck's likelihoods of round(z) (orderopt codes ẑ = round(z),
  not CompressAI's round(z − median) + median) and the Gaussian conditional's likelihoods of
  round(y) under those scales and means; plus the versions that made them.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

ARCHS = ("bmshj2018-hyperprior", "mbt2018-mean")
N, M = 8, 12
SEED = 0
ZOO_ARCH = "bmshj2018-hyperprior"
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "compressai"


def import_compressai():
    """``compressai.models`` and ``compressai.zoo``, with an empty torchvision where none loads."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or the CUDA build's ops failing to load under a CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms})
    import compressai
    import compressai.models
    import compressai.zoo.pretrained

    return compressai


@torch.no_grad()
def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random values for every parameter CompressAI initialises to a constant or a diagonal."""

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen)

    for name, p in model.named_parameters():
        if name.endswith(".beta"):  # stored as sqrt(β + pedestal), β well above its minimum
            p.copy_(torch.sqrt(0.5 + torch.rand(p.shape, generator=gen)))
        elif name.endswith(".gamma"):  # asymmetric, some entries below the bound (γ = 0 there)
            p.copy_(0.3 * randn(p) + 0.3 * torch.eye(p.shape[0]))
        elif name.startswith("entropy_bottleneck.") and ".quantiles" not in name:
            p.add_(0.3 * randn(p))
        elif name == "entropy_bottleneck.quantiles":  # medians away from 0 (orderopt ignores them)
            p.add_(0.4 * randn(p)[:, :, 1:2])
    for layer, gain in ((model.g_a[6], 25), *((model.h_a[i], 4) for i in (0, 2, 4))):
        layer.weight.mul_(gain)
    for i in (0, 2, 4):
        model.h_s[i].weight.mul_(6)


def zoo_names(state_dict: dict) -> dict:
    """The state dict with the entropy bottleneck's parameters under the zoo files' names."""
    out = {}
    for k, v in state_dict.items():
        for new, old in (("matrices", "_matrices"), ("biases", "_biases"), ("factors", "_factors")):
            if k.startswith(f"entropy_bottleneck.{new}."):
                k = k.replace(f".{new}.", f".{old}.", 1)
        out[k] = v
    return out


@torch.no_grad()
def outputs(model, x: torch.Tensor, scale_only: bool) -> dict[str, torch.Tensor]:
    y = model.g_a(x)
    z = model.h_a(torch.abs(y) if scale_only else y)
    z_hat, y_hat = torch.round(z), torch.round(y)
    eb = model.entropy_bottleneck
    c = z.shape[1]
    lik, _, _ = eb._likelihood(z_hat.permute(1, 0, 2, 3).reshape(c, 1, -1))
    z_lik = eb.likelihood_lower_bound(lik).reshape(c, *z.shape[:1], *z.shape[2:]).permute(1, 0, 2, 3)
    h = model.h_s(z_hat)
    scales, means = (h, None) if scale_only else h.chunk(2, 1)
    gc = model.gaussian_conditional
    y_lik = gc.likelihood_lower_bound(gc._likelihood(y_hat, scales, means))
    out = {"y": y, "z": z, "hyper": h, "x_hat": model.g_s(y_hat), "z_likelihoods": z_lik}
    return {**out, "y_likelihoods": y_lik}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help="fixture folder (default: tests/data/compressai)")
    args = p.parse_args(argv)
    compressai = import_compressai()
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior
    from compressai.zoo.pretrained import load_pretrained

    classes = {"bmshj2018-hyperprior": ScaleHyperprior, "mbt2018-mean": MeanScaleHyperprior}
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    image = (torch.rand(1, 3, 64, 128, generator=gen) * 255).round().to(torch.uint8)
    x = image.float() / 255
    args.out.mkdir(parents=True, exist_ok=True)
    saved = {
        "versions": {"compressai": compressai.__version__, "torch": str(torch.__version__)},
        "image": image,
    }
    for arch in ARCHS:
        model = classes[arch](N, M)
        perturb(model, gen)
        model.entropy_bottleneck.update(force=True)
        model.eval()
        sd = model.state_dict()
        torch.save(sd, args.out / f"{arch}.pth")
        saved[arch] = outputs(model, x, arch == "bmshj2018-hyperprior")
        for k, v in saved[arch].items():
            print(f"{arch} {k}: {tuple(v.shape)} in [{float(v.min()):.3g}, {float(v.max()):.3g}]")
        if arch == ZOO_ARCH:
            path = args.out / f"{arch}-zoo.pth.tar"
            torch.save(zoo_names(sd), path, _use_new_zipfile_serialization=False)
            # the zoo's own loading path must give back the same model
            again = classes[arch].from_state_dict(load_pretrained(torch.load(path, weights_only=True)))
            again.eval()
            with torch.no_grad():
                assert torch.equal(again(x)["x_hat"], model(x)["x_hat"])
    torch.save(saved, args.out / "outputs.pt")
    for f in sorted(args.out.iterdir()):
        print(f"{f}: {f.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
