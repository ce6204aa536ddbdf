"""Byte-identical outputs: streams of every context-model kind and coder, and a search run's
files, against digests recorded in ``tests/golden.json``.

A refactoring must leave these bytes alone. A change that alters them on purpose (a new
container version, a different rounding) re-records them with
``ORDEROPT_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py`` and says why in its commit.
The digests hold for one torch version and CPU family: the networks' float arithmetic
decides the coded symbols' Gaussians. conftest.py caps oneDNN and ATen at AVX2 kernels, whose
rounding differs from the AVX-512 ones (the search outputs' digests changed on an AVX-512 machine).
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orderopt import orders as od
from orderopt import search, streams
from orderopt.context import AnyOrderContext, AutoregressiveContext, MultistageContext
from orderopt.fit import save_context
from orderopt.model import HyperpriorCodec, make_checkpoint

GOLDEN = Path(__file__).with_name("golden.json")
RECORD = os.environ.get("ORDEROPT_RECORD_GOLDEN") == "1"
_seen: dict[str, str] = {}


def check(name: str, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if RECORD:
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        GOLDEN.write_text(json.dumps({**recorded, name: digest}, indent=1, sort_keys=True) + "\n")
        return
    recorded = json.loads(GOLDEN.read_text())
    assert digest == recorded[name], f"{name} changed: its bytes differ from the recorded ones"


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic image with structure at several scales (uint8, H×W×3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1)
    img = 0.5 + 0.35 * img + 0.1 * rng.standard_normal((h, w, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return HyperpriorCodec(N=8, M=12).eval()


CONTEXTS = {
    "multistage-2x2": lambda m, c: MultistageContext(od.paper_order(2), m, c),
    "multistage-4x4": lambda m, c: MultistageContext(od.paper_order(4), m, c),
    "autoregressive": lambda m, c: AutoregressiveContext(m, c),
    "proxy-2x2": lambda m, c: AnyOrderContext(2, m, c),
}


@pytest.mark.parametrize("coder", ["rans", "gaussian"])
@pytest.mark.parametrize("kind", CONTEXTS)
def test_streams_are_byte_identical(base, kind, coder):
    torch.manual_seed(1)
    ctx = CONTEXTS[kind](base.M, 2 * base.M).eval()
    order = od.DecodingOrder.parse("0,2;1,3") if kind.startswith("proxy") else None
    meta = {"kind": kind.split("-")[0].replace("proxy", "anyorder"), "hash": f"golden-{kind}"}
    image = torch.from_numpy(smooth_image(80, 96, 0)).permute(2, 0, 1).float() / 255
    enc = streams.encode(image, base, "golden-base", ctx, meta, order, coder=coder)
    check(f"stream/{kind}/{coder}", enc.stream)
    dec = streams.decode(enc.stream, base, "golden-base", ctx, meta)
    assert torch.equal(dec.y_hat, enc.y_hat)


def test_search_outputs_are_byte_identical(tmp_path, base):
    images = tmp_path / "imgs"
    images.mkdir()
    for i, (h, w) in enumerate([(80, 96), (64, 72), (96, 64)]):
        Image.fromarray(smooth_image(h, w, i)).save(images / f"{i}.png")
    ckpt = tmp_path / "base.pt"
    torch.save(make_checkpoint(base, 0.01, {"steps": 0}), ckpt)
    torch.manual_seed(2)
    proxy = AnyOrderContext(2, base.M, 2 * base.M).eval()
    meta = {"kind": "anyorder", "patch": 2, "latent_channels": base.M, "hyper_channels": 2 * base.M}
    save_context(proxy, tmp_path / "proxy.pt", {**meta, "raster_fraction": 0.25})
    out = tmp_path / "run"
    args = [
        "--patch",
        "2",
        "--model",
        str(ckpt),
        "--images",
        str(images),
        "--proxy",
        str(tmp_path / "proxy.pt"),
    ]
    assert search.main([*args, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    for name in ("candidates.csv", "frontier.csv", "costs.npz"):
        check(f"search/{name}", (out / name).read_bytes())
