"""CompressAI checkpoints read into orderopt's modules (orderopt.compressai), checked against
outputs CompressAI 1.2.8 itself computed on tiny random models (N = 8, M = 12; the files in
tests/data/compressai/ and how they were made: experiments/make_compressai_fixture.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orderopt import codec, evaluate, latents, search, train
from orderopt.compressai import ScaleHyperpriorCodec, load_compressai
from orderopt.errors import UserError
from orderopt.latents import load_latents
from orderopt.model import gaussian_likelihood, load_model, make_checkpoint

from .conftest import DEVICES

DATA = Path(__file__).parent / "data" / "compressai"
SCALE, MEAN = "bmshj2018-hyperprior", "mbt2018-mean"
FILES = [(SCALE, f"{SCALE}.pth"), (SCALE, f"{SCALE}-zoo.pth.tar"), (MEAN, f"{MEAN}.pth")]
# The transforms are the same float32 operations as CompressAI's (bit-identical on the machine
# that made the fixture); the likelihoods are computed in another, equivalent order (the
# entropy bottleneck's CDF difference on the far side of the median, as tensorflow-compression
# does), hence a relative tolerance.
EXACT = {"rtol": 1e-5, "atol": 1e-6}
LIKELIHOOD = {"rtol": 1e-4, "atol": 1e-9}


def spec(arch: str, name: str | None = None) -> str:
    return f"compressai:{arch}:{DATA / (name or f'{arch}.pth')}"


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA / "outputs.pt", weights_only=True)


@pytest.mark.parametrize("arch,name", FILES, ids=[n for _, n in FILES])
def test_forward_equals_compressai(arch, name, reference):
    model, meta = load_model(spec(arch, name))
    ref = reference[arch]
    x = reference["image"].float() / 255
    y_hat, z_hat = ref["y"].round(), ref["z"].round()  # CompressAI's rounding, so ties cannot differ
    with torch.no_grad():
        torch.testing.assert_close(model.g_a(x), ref["y"], **EXACT)
        torch.testing.assert_close(model.hyper_analysis(ref["y"]), ref["z"], **EXACT)
        hyper = model.h_s(z_hat)
        torch.testing.assert_close(hyper, ref["hyper"], **EXACT)
        torch.testing.assert_close(model.g_s(y_hat), ref["x_hat"], **EXACT)
        torch.testing.assert_close(model.z_prior.likelihood(z_hat), ref["z_likelihoods"], **LIKELIHOOD)
        means, scales = model.split_hyper(hyper)
        torch.testing.assert_close(
            gaussian_likelihood(y_hat, means, scales), ref["y_likelihoods"], **LIKELIHOOD
        )
        a = model.analyze(x)
    # what the context models get: ŷ = round(y), h = h_s(round(z)) and the bits of ẑ
    assert torch.equal(a.y_hat, y_hat) and torch.equal(a.z_hat, z_hat)
    torch.testing.assert_close(a.hyper, ref["hyper"], **EXACT)
    assert float(a.z_bits[0]) == pytest.approx(float(-torch.log2(ref["z_likelihoods"]).sum()), rel=1e-5)
    torch.testing.assert_close(model.synthesize(y_hat), ref["x_hat"].clamp(0, 1), **EXACT)
    assert meta["arch"] == {"N": 8, "M": 12} and meta["lmbda"] is None
    if arch == SCALE:  # scales only: M hyper channels, zero means
        assert isinstance(model, ScaleHyperpriorCodec) and hyper.shape[1] == 12 and not means.any()
    else:
        assert hyper.shape[1] == 24


def training_state() -> dict:
    """What CompressAI's examples/train.py saves besides the weights (read with weights_only)."""
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([param], lr=1e-4)
    param.grad = torch.ones(2)
    opt.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min")
    return {
        "optimizer": opt.state_dict(),
        "aux_optimizer": opt.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
    }


def test_one_model_one_hash_whatever_the_file_looks_like(tmp_path):
    """Plain, zoo-style, training-checkpoint, DataParallel and CompressAI 1.1 names of the
    same weights are the same model; the mean-scale one hashes like an orderopt checkpoint of
    the same weights (it computes the same latents)."""
    plain = torch.load(DATA / f"{SCALE}.pth", weights_only=True)
    variants = {
        "wrapped": {"epoch": 3, "state_dict": plain, "loss": torch.tensor(1.0), **training_state()},
        "module": {f"module.{k}": v for k, v in plain.items()},
        "v1.1": {
            k.replace("entropy_bottleneck.matrices.", "entropy_bottleneck._matrix"): v
            for k, v in plain.items()
        },
    }
    _, meta = load_compressai(SCALE, DATA / f"{SCALE}.pth")
    assert load_compressai(SCALE, DATA / f"{SCALE}-zoo.pth.tar")[1]["hash"] == meta["hash"]
    for name, sd in variants.items():
        torch.save(sd, tmp_path / f"{name}.pth.tar")
        assert load_compressai(SCALE, tmp_path / f"{name}.pth.tar")[1]["hash"] == meta["hash"], name
    mean, mean_meta = load_compressai(MEAN, DATA / f"{MEAN}.pth")
    assert mean_meta["hash"] != meta["hash"]
    assert make_checkpoint(mean, 0.01, {})["hash"] == mean_meta["hash"]


def test_bad_inputs_are_one_line_errors(tmp_path):
    plain = torch.load(DATA / f"{MEAN}.pth", weights_only=True)

    def saved(obj, name="bad.pth"):
        torch.save(obj, tmp_path / name)
        return f"compressai:{MEAN}:{tmp_path / name}"

    with pytest.raises(
        UserError, match="unknown CompressAI architecture 'mbt2018'.*hyperprior, mbt2018-mean"
    ):
        load_model(f"compressai:mbt2018:{DATA / f'{MEAN}.pth'}")
    for no_file in ("compressai:mbt2018-mean", "compressai:mbt2018-mean:"):
        with pytest.raises(UserError, match="names no checkpoint file"):
            load_model(no_file)
    with pytest.raises(UserError, match="does not exist"):
        load_model(f"compressai:{MEAN}:{tmp_path / 'missing.pth.tar'}")
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_model(f"compressai:{MEAN}:{tmp_path / 'junk.pth'}")
    with pytest.raises(UserError, match="not a CompressAI state dict"):
        load_model(saved([1, 2]))
    with pytest.raises(UserError, match="lacks g_a.0.weight"):
        load_model(saved({"h_a.0.weight": plain["h_a.0.weight"]}))
    # the other architecture's weights, and mbt2018 (with its context model)
    with pytest.raises(UserError, match=f"does not fit {SCALE} with N=8, M=12 \\(it looks like {MEAN}\\)"):
        load_model(f"compressai:{SCALE}:{DATA / f'{MEAN}.pth'}")
    with pytest.raises(UserError, match="looks like mbt2018 \\(with its autoregressive context"):
        load_model(saved({**plain, "context_prediction.weight": torch.zeros(24, 12, 5, 5)}))
    with pytest.raises(UserError, match="does not fit"):
        load_model(saved({k: v for k, v in plain.items() if k != "g_s.3.gamma"}))
    bounds = {**plain, "gaussian_conditional.lower_bound_scale.bound": torch.tensor([0.5])}
    with pytest.raises(UserError, match="lower_bound_scale.bound is \\[0.5\\].*0.11.*not supported"):
        load_model(saved(bounds))
    with pytest.raises(UserError, match="beta_reparam.lower_bound.bound"):
        load_model(saved({**plain, "g_a.1.beta_reparam.lower_bound.bound": torch.tensor([0.1])}))
    # a CompressAI file given as an orderopt checkpoint: the error says how to pass it
    with pytest.raises(UserError, match="not an orderopt base-model checkpoint.*compressai:ARCH:"):
        load_model(DATA / f"{MEAN}.pth")
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.evaluate", "--model", f"compressai:foo:{DATA / f'{MEAN}.pth'}"],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and r.stderr.count("\n") == 1
        and "unknown CompressAI architecture 'foo'" in r.stderr
    )


@pytest.mark.parametrize("arch", [SCALE, MEAN])
def test_latents_and_evaluate_commands(arch, tmp_path, image_dir):
    out = tmp_path / "lat.pt"
    assert latents.main(["--model", spec(arch), "--images", str(image_dir), "--out", str(out)]) == 0
    lat = load_latents(out)
    _, meta = load_model(spec(arch))
    assert lat.model_hash == meta["hash"] and len(lat) == 3
    assert lat.latent_channels == 12 and lat.hyper_channels == (12 if arch == SCALE else 24)
    res = tmp_path / "eval.json"
    assert evaluate.main(["--model", spec(arch), "--images", str(image_dir), "--out", str(res)]) == 0
    d = json.loads(res.read_text())
    assert d["model_hash"] == meta["hash"] and d["lmbda"] is None and arch in d["description"]
    assert d["results"]["bpp"][0] > 0 and np.isfinite(d["results"]["psnr"][0])


@pytest.mark.parametrize("device", DEVICES)
def test_train_search_and_codec_on_a_compressai_model(tmp_path, image_dir, device):
    """The scale hyperprior (M hyper channels, zero means) through a proxy's training, a patch-2
    search and a stream's round trip."""
    model = ["--model", spec(SCALE), "--cache-dir", str(tmp_path / "cache")]
    proxy = tmp_path / "proxy.pt"
    args = ["context", "--proxy", "--patch", "2", "--train-images", str(image_dir)]
    args += ["--eval-images", str(image_dir), *model, "--steps", "2", "--batch", "2", "--crop", "4"]
    assert train.main([*args, "--out", str(proxy)]) == 0
    run = tmp_path / "run"
    search_args = ["--patch", "2", *model, "--images", str(image_dir), "--proxy", str(proxy)]
    assert search.main([*search_args, "--device", device, "--out", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model_hash"] == load_model(spec(SCALE))[1]["hash"]
    png, stream, out = tmp_path / "in.png", tmp_path / "s.oopt", tmp_path / "out.png"
    Image.open(next(image_dir.glob("*.png"))).save(png)
    common = ["--model", spec(SCALE), "--context", str(proxy), "--device", device]
    assert codec.main(["encode", str(png), str(stream), "--order", "0,2;3,1", *common]) == 0
    assert codec.main(["decode", str(stream), str(out), *common]) == 0
    assert Image.open(out).size == Image.open(png).size
