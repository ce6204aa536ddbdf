"""The found order out: a self-contained PyTorch module of its multistage context model.

    python -m orderopt.export ORDER --out DIR [--latent-channels M --hyper-channels C]
    python -m orderopt.export [ORDER] --context CKPT --out DIR [--framework compressai|torch]

writes into DIR ``multistage_context.py`` (``MultistageContextModel``: the order's masked
convolutions, its entropy-parameter network, ``forward`` and the stage loop ``compress`` /
``decompress`` around an entropy coder given as a callback; imports torch only), ``masks.json``
(the order, its stage matrix, every position's context mask, the positions of every stage) and,
with ``--context``, ``weights.pt`` (the checkpoint's weights under the exported names). The
module computes what :class:`~orderopt.context.MultistageContext` computes
(``tests/test_export.py``), so a codec that never imports orderopt codes with the found order.
The module's code is :mod:`orderopt.export_template`, linted and tested like the rest.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from . import orders as od
from .context import MultistageContext
from .errors import HelpFormatter, OneLineErrorParser, UserError, number, run_cli
from .files import atomic_write, check_writable, save_torch
from .fit import load_context

FRAMEWORKS = ("compressai", "torch")
MODULE_FILE, MASKS_FILE, WEIGHTS_FILE = "multistage_context.py", "masks.json", "weights.pt"
PAPER = (
    'Lin et al., "Multistage Spatial Context Models for Learned Image Compression", ICASSP 2023 '
    "(arXiv:2302.09263)"
)
PAPER_LINES = (
    'Lin et al., "Multistage Spatial Context Models for Learned Image Compression",\n'
    "ICASSP 2023 (arXiv:2302.09263)."
)
TEMPLATE = Path(__file__).with_name("export_template.py")
BEGIN, END = "# <exported constants>\n", "# </exported constants>\n"


def named_orders() -> dict[str, od.DecodingOrder]:
    """Orders the command line takes by name besides the text form."""
    return {
        "paper2": od.paper_order(2),
        "paper4": od.paper_order(4),
        "checkerboard": od.checkerboard(),
        "tinylic": od.tinylic_order(),
        "hyperprior": od.hyperprior_only(),
    }


def parse_order(text: str) -> od.DecodingOrder:
    """An order from its text form ("0,1;2,3") or a name of :func:`named_orders`."""
    named = named_orders()
    if text.strip().lower() in named:
        return named[text.strip().lower()]
    try:
        return od.DecodingOrder.parse(text)
    except ValueError as err:
        raise UserError(f"{err} (or a name: {', '.join(named)})") from None


def diagram(order: od.DecodingOrder) -> str:
    """The k×k patch as an ASCII grid of stage numbers."""
    width = max(2, len(str(order.num_stages - 1)))
    rule = "+" + "+".join("-" * (width + 2) for _ in range(order.patch)) + "+"
    rows = ["| " + " | ".join(f"{v:>{width}}" for v in row) + " |" for row in order.stages.tolist()]
    return "\n".join([rule, *(line for row in rows for line in (row, rule))])


def _usage(framework: str, order: od.DecodingOrder) -> str:
    """The docstring's usage section: CompressAI's mbt2018-mean, or any entropy coder."""
    if framework == "torch":
        return """Usage with any entropy coder (means come first; scales are raw outputs: lower-bound them,
orderopt trains with a bound of 0.11):

    ctx = MultistageContextModel().eval()
    ctx.load_state_dict(torch.load("weights.pt"))
    means, scales = ctx(y_hat, hyper)         # all of ŷ known: training, rate estimates
    y_hat = ctx.compress(y, hyper, encode)    # encode(stage, y_stage, means, scales) -> ŷ_stage
    y_hat = ctx.decompress(hyper, decode)     # decode(stage, means, scales) -> ŷ_stage

Each stage's latents, means and scales are (B, M, n) tensors (see MultistageContextModel)."""
    return f"""In CompressAI's mbt2018-mean (MeanScaleHyperprior, compressai.zoo.mbt2018_mean; M = 192
for qualities 1-4, 320 for 5-8), h is the whole output of h_s: hyper = net.h_s(z_hat), 2M
channels at ŷ's resolution. The model takes over the means and scales of ŷ (it returns means
first, while h_s puts scales first) and GaussianConditional codes ŷ stage by stage; its scale
bound (0.11) is the one orderopt trains with. The weights must come from a context model trained
on that codec's latents (for bmshj2018-hyperprior, h is its h_s output too: M channels):

    ORDER="{order}"
    python -m orderopt.train context --order "$ORDER" --model compressai:mbt2018-mean:PATH ...

Coding an image x (B×3×H×W, H and W multiples of 64) with it:

    import torch
    from compressai.zoo import mbt2018_mean
    from multistage_context import MultistageContextModel

    net = mbt2018_mean(quality=3, pretrained=True).eval()
    net.update(force=True)  # the entropy coders' CDF tables
    ctx = MultistageContextModel().eval()
    ctx.load_state_dict(torch.load("weights.pt"))
    gc = net.gaussian_conditional

    # encoder
    y = net.g_a(x)
    z = net.h_a(y)
    z_strings = net.entropy_bottleneck.compress(z)
    hyper = net.h_s(net.entropy_bottleneck.decompress(z_strings, z.shape[-2:]))
    y_strings = []

    def encode(stage, y_stage, means, scales):  # this stage's latents: (B, M, n) each
        y_strings.append(gc.compress(y_stage, gc.build_indexes(scales), means=means))
        return gc.quantize(y_stage, "dequantize", means)  # the ŷ the decoder will get

    y_hat = ctx.compress(y, hyper, encode)

    # decoder, from y_strings, z_strings and z_shape = z.shape[-2:]
    hyper = net.h_s(net.entropy_bottleneck.decompress(z_strings, z_shape))

    def decode(stage, means, scales):
        return gc.decompress(y_strings[stage], gc.build_indexes(scales), means=means)

    x_hat = net.g_s(ctx.decompress(hyper, decode)).clamp_(0, 1)

Training (all of ŷ known), as mbt2018's forward does with its context model:
y_hat = gc.quantize(y, "noise" if training else "dequantize"); means, scales = ctx(y_hat,
hyper); _, y_likelihoods = gc(y, scales, means=means).

Quantisation: orderopt trains and rates ŷ = round(y); encode above codes CompressAI's
round(y - means) + means, as mbt2018's compress does. To code round(y) itself, pass
means=means.round() to gc.compress and gc.decompress and return torch.round(y_stage) from
encode (the Gaussians are then centred on integers: a slightly higher rate)."""


def render_module(
    order: od.DecodingOrder,
    latent_channels: int,
    hyper_channels: int,
    framework: str = "compressai",
    source: str = "",
) -> str:
    """The text of ``multistage_context.py``: :mod:`orderopt.export_template` with this order's
    docstring and constants."""
    if framework not in FRAMEWORKS:
        raise UserError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
    text = TEMPLATE.read_text(encoding="utf-8")
    body_start, begin, end = text.index('"""\n', 3) + 4, text.index(BEGIN), text.index(END)
    k, t = order.patch, order.num_stages
    plural = lambda n: "" if n == 1 else "s"
    grid = "\n".join("    " + line for line in diagram(order).splitlines())
    weights = (
        f"the weights of {source} in weights.pt beside it"
        if source
        else "random weights (export with --context CKPT for trained ones)"
    )
    doc = f'''"""Multistage spatial context model of the decoding order {order}.

{PAPER_LINES}

ŷ (B×M×H×W) is tiled into {k}×{k} patches; every patch decodes its {k * k} in-patch position{plural(k * k)}
in {t} stage{plural(t)}, all patches in parallel. The number at each position is its stage:

{grid}

A latent is predicted from the latents of earlier stages under its 5×5 masked convolution
(masks.json lists every mask) and from the hyperprior features h at its own place.

Exported by `python -m orderopt.export` for M = {latent_channels} latent channels and {hyper_channels} hyper
channels, with {weights}. It needs torch only.

{_usage(framework, order)}
"""
'''
    stages = repr(tuple(tuple(row) for row in order.stages.tolist()))
    constants = (
        '# the decoding order (rows separated by ";") and its stage matrix: STAGES[row][col] is the\n'
        "# stage of in-patch position (row, col)\n"
        f'ORDER = "{order}"\n'
        f"STAGES = {stages}\n"
        f"LATENT_CHANNELS = {latent_channels}  # M, the channels of ŷ\n"
        f"HYPER_CHANNELS = {hyper_channels}  # the channels of h = h_s(ẑ)\n"
        "KERNEL_SIZE = 5\n"
    )
    return doc + text[body_start:begin] + constants + text[end + len(END) :]


def masks_document(
    order: od.DecodingOrder, latent_channels: int, hyper_channels: int, kernel_size: int = 5
) -> dict:
    """``masks.json``: the order, every position's context mask and the positions of every stage."""
    return {
        "paper": PAPER,
        **order.to_dict(kernel_size),
        "stage_positions": [[list(p) for p in order.stage_positions(s)] for s in range(order.num_stages)],
        "latent_channels": latent_channels,
        "hyper_channels": hyper_channels,
        "layout": (
            "stages[row][col] is the stage of in-patch position (row, col) of a patch x patch tile "
            "of the latent, which is at latent (row + patch*i, col + patch*j); masks[row][col] is its "
            "kernel_size x kernel_size context mask, centre at [kernel_size//2][kernel_size//2], 1 where "
            "the tap is decoded before it; stage_positions[s] lists the positions decoded at stage s"
        ),
    }


def export_state_dict(model: MultistageContext) -> dict[str, torch.Tensor]:
    """orderopt's weights under the exported module's names (float32, masks included)."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    masks = model.mask.detach().float().cpu()  # (k², 1, 1, K, K)
    out: dict[str, torch.Tensor] = {}
    for q in range(model.order.patch**2):
        out[f"context_prediction.{q}.weight"] = sd["weight"][q].clone()
        out[f"context_prediction.{q}.bias"] = sd["bias"][q].clone()
        out[f"context_prediction.{q}.mask"] = masks[q].clone()
    for name, value in sd.items():
        if name.startswith("entropy."):
            out["entropy_parameters." + name.removeprefix("entropy.")] = value.clone()
    return out


def export(
    order: od.DecodingOrder,
    out_dir: str | Path,
    model: MultistageContext | None = None,
    latent_channels: int = 192,
    hyper_channels: int = 384,
    framework: str = "compressai",
    source: str = "",
) -> list[Path]:
    """Write the module, masks.json and (with ``model``) weights.pt into ``out_dir``; returns
    the files written. A ``model`` fixes order and channels; a stale weights.pt goes."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder")
    if model is not None:
        if model.order != order:
            raise UserError(f"the context model is of order {model.order}, not {order}")
        latent_channels, hyper_channels = model.weight.shape[2], model.entropy.hyper_in.in_channels
        if model.kernel_size != 5:
            raise UserError(f"only 5×5 context kernels are exported, not {model.kernel_size}")
        if model.mixture > 1:
            raise UserError(
                f"only Gaussian context models are exported, and this one predicts mixtures of "
                f"K = {model.mixture} Gaussians"
            )
    for name in (MODULE_FILE, MASKS_FILE, WEIGHTS_FILE):
        check_writable(out_dir / name)
    text = render_module(order, latent_channels, hyper_channels, framework, source)
    compile(text, MODULE_FILE, "exec")  # never write a module that does not parse
    written = [out_dir / MODULE_FILE, out_dir / MASKS_FILE]
    atomic_write(written[0], lambda tmp: tmp.write_text(text, encoding="utf-8"))
    masks = json.dumps(masks_document(order, latent_channels, hyper_channels), indent=2)
    masks = re.sub(
        r"\[[\d,\s]*\]", lambda m: " ".join(m.group().split()).replace("[ ", "[").replace(" ]", "]"), masks
    )
    atomic_write(written[1], lambda tmp: tmp.write_text(masks + "\n", encoding="utf-8"))
    weights = out_dir / WEIGHTS_FILE
    if model is not None:
        save_torch(export_state_dict(model), weights)
        written.append(weights)
    else:
        weights.unlink(missing_ok=True)  # from an earlier export of other weights
    return written


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="python -m orderopt.export",
        description="Write a self-contained PyTorch module (masked convolutions, entropy-parameter network, "
        "stage loop for compress/decompress) of a decoding order's multistage context model, its masks as "
        "JSON and, with --context, its trained weights, for use in another codec.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "order",
        nargs="?",
        help="decoding order, e.g. '0,2,5,4;1,7,11,8;6,12,13,10;3,14,15,9', or a name: "
        f"{', '.join(named_orders())} (default: the order of --context)",
    )
    p.add_argument(
        "--context",
        help="multistage context-model checkpoint (python -m orderopt.train context --order ...) whose "
        "weights to export as weights.pt; its order and channels are used (default: none, random weights)",
    )
    p.add_argument(
        "--latent-channels",
        type=number(at_least=1),
        help="M, the channels of ŷ, without --context (default: 192, as mbt2018-mean of qualities 1-4)",
    )
    p.add_argument(
        "--hyper-channels",
        type=number(at_least=1),
        help="channels of h = h_s(ẑ), without --context (default: 2M, as mbt2018-mean's h_s gives)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (created; the files of an earlier export in it are replaced, its weights.pt "
        "removed when exporting without --context)",
    )
    p.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default="compressai",
        help="usage notes in the module's docstring: compressai (how to plug it into CompressAI's "
        "mbt2018-mean with GaussianConditional) or torch (any entropy coder); the code is the same "
        "plain PyTorch either way",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    order = parse_order(args.order) if args.order else None
    model, source = None, ""
    if args.context:
        model, meta = load_context(args.context)
        if meta.get("kind") != "multistage":
            raise UserError(
                f"{args.context} holds a context model of kind {meta.get('kind')!r}, not a multistage "
                "model of one order; train one with `python -m orderopt.train context --order ORDER ...`"
            )
        if order is not None and order != model.order:
            raise UserError(f"{args.context} is a model of order {model.order}, not of {order}; omit ORDER")
        order = model.order
        given = {"--latent-channels": args.latent_channels, "--hyper-channels": args.hyper_channels}
        found = {"--latent-channels": meta["latent_channels"], "--hyper-channels": meta["hyper_channels"]}
        for option, value in given.items():
            if value is not None and value != found[option]:
                raise UserError(f"{args.context} has {option.lstrip('-')} {found[option]}, not {value}")
        source = Path(args.context).name
    elif order is None:
        raise UserError("give ORDER, or --context CKPT to export a trained model's order")
    m = args.latent_channels or 192
    written = export(order, args.out, model, m, args.hyper_channels or 2 * m, args.framework, source)
    what = "trained weights" if model is not None else "random weights"
    print(
        f"order {order} ({order.patch}×{order.patch}, {order.num_stages} stages, {what}): "
        + ", ".join(str(p) for p in written)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
