"""Runs the usage example of an exported module (``python -m orderopt.export``) with CompressAI
itself: a tiny randomly initialised ``mbt2018-mean`` codes an image stage by stage through
``GaussianConditional.compress``/``decompress`` and the decoded ŷ must equal the encoder's.

Run in the throwaway CompressAI environment of ``experiments/make_compressai_fixture.py``
(CompressAI is not a dependency of orderopt)::

    python -m orderopt.export paper4 --latent-channels 12 --hyper-channels 24 --out /tmp/exp4
    /tmp/cai-venv/bin/python experiments/export_with_compressai.py /tmp/exp4
"""

from __future__ import annotations

import argparse
import sys
import types


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export", help="folder written by `python -m orderopt.export` (M = 12, hyper 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of the CompressAI model and image (default: 0)")
    args = p.parse_args()
    try:
        import torchvision  # noqa: F401
    except Exception:  # CompressAI lists torchvision's transforms only; the models never use them
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms})
    import torch
    from compressai.models import MeanScaleHyperprior

    sys.path.insert(0, args.export)
    from multistage_context import MultistageContextModel

    torch.manual_seed(args.seed)
    net = MeanScaleHyperprior(N=8, M=12).eval()
    net.update(force=True)
    ctx = MultistageContextModel().eval()
    gc = net.gaussian_conditional
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        y = net.g_a(x)
        z = net.h_a(y)
        z_strings, z_shape = net.entropy_bottleneck.compress(z), z.shape[-2:]
        hyper = net.h_s(net.entropy_bottleneck.decompress(z_strings, z_shape))
        y_strings = []

        def encode(stage, y_stage, means, scales):
            y_strings.append(gc.compress(y_stage, gc.build_indexes(scales), means=means))
            return gc.quantize(y_stage, "dequantize", means)

        y_hat = ctx.compress(y, hyper, encode)
        hyper = net.h_s(net.entropy_bottleneck.decompress(z_strings, z_shape))

        def decode(stage, means, scales):
            return gc.decompress(y_strings[stage], gc.build_indexes(scales), means=means)

        y_decoded = ctx.decompress(hyper, decode)
        x_hat = net.g_s(y_decoded).clamp_(0, 1)
    same = torch.equal(y_decoded, y_hat)
    print(
        f"{len(y_strings)} stages coded by CompressAI's GaussianConditional; decoded ŷ equals the "
        f"encoder's: {same}; x̂ {tuple(x_hat.shape)}"
    )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
