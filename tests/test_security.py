"""Hostile inputs: planted pickles, crafted stream headers, decompression bombs.

Each case was found by trying orderopt as an attacker would; each must end in a one-line
error (or a refusal) without running code, allocating gigabytes or hanging.
"""

import os
import pickle
import resource
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from orderopt import container, data, streams, train
from orderopt import orders as o
from orderopt.context import AnyOrderContext
from orderopt.errors import UserError
from orderopt.fit import FitConfig, build_context, fit_context, load_context, save_context
from orderopt.latents import LatentEntry, LatentSet
from orderopt.model import load_model

M, CH = 12, 24


class _Plant:
    """Unpickling this runs ``open(marker, 'w')``: the marker file proves code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"format": "orderopt-context", "version": 1, "x": _Plant(marker)}, f)


def tiny_latents():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(-2, 3, (M, 8, 8), generator=g).float()
    e = LatentEntry("a", y, torch.rand(CH, 8, 8, generator=g), 1.0, 16384)
    return LatentSet((e,), "t", "i")


def test_planted_pickle_as_resume_checkpoint_never_runs(tmp_path):
    """`train context --out evil.pt` and `search --verify --dedicated-dir DIR` both resume
    through fit_context: a planted pickle there is refused, never unpickled."""
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    plant(evil, marker)
    model = build_context("autoregressive", M, CH)
    meta = {"kind": "autoregressive", "latent_channels": M, "hyper_channels": CH, "model_hash": "t"}
    with pytest.raises(UserError, match="cannot be read"):
        fit_context(model, tiny_latents(), FitConfig(steps=1, batch=1, crop=8), evil, meta, progress=False)
    assert not marker.exists()
    with pytest.raises(UserError):
        load_context(evil)
    assert not marker.exists()


def test_planted_pickle_on_the_command_line(tmp_path, tiny_ckpt, image_dir):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    plant(evil, marker)
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.train", "context", "--kind", "autoregressive", "--train-images",
         str(image_dir), "--eval-images", str(image_dir), "--model", str(tiny_ckpt), "--cache-dir",
         str(tmp_path / "cache"), "--steps", "1", "--batch", "1", "--crop", "4", "--out", str(evil)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_resuming_another_models_checkpoint_is_refused(tmp_path):
    """A context checkpoint of another order (or a base model) is not overwritten or relabelled."""
    path = tmp_path / "ms.pt"
    lat = tiny_latents()
    meta = {"kind": "multistage", "order": "0,1;2,3", "latent_channels": M, "hyper_channels": CH}
    cfg = FitConfig(steps=1, batch=1, crop=8)
    fit_context(build_context("multistage", M, CH, "0,1;2,3"), lat, cfg, path, meta, progress=False)
    before = path.read_bytes()
    other = {**meta, "order": "0,2;3,1"}
    with pytest.raises(UserError, match="another context model.*'0,1;2,3'.*'0,2;3,1'"):
        fit_context(build_context("multistage", M, CH, "0,2;3,1"), lat, cfg, path, other, progress=False)
    assert path.read_bytes() == before


def test_same_seed_same_weights(tmp_path, tiny_ckpt, image_dir):
    common = ["context", "--kind", "checkerboard", "--train-images", str(image_dir), "--eval-images",
              str(image_dir), "--model", str(tiny_ckpt), "--cache-dir", str(tmp_path / "cache"), "--steps",
              "2", "--batch", "1", "--crop", "4", "--seed", "3"]  # fmt: skip
    for name in ("a", "b"):
        assert train.main([*common, "--out", str(tmp_path / f"{name}.pt")]) == 0
    assert load_context(tmp_path / "a.pt")[1]["hash"] == load_context(tmp_path / "b.pt")[1]["hash"]


# --- crafted streams ---------------------------------------------------------------------------
@pytest.fixture
def stream(tmp_path, tiny_ckpt):
    base, meta = load_model(tiny_ckpt)
    with torch.no_grad():
        base.g_a[-1].weight *= 40  # latents of a few values, not all zero as a random tiny model gives
    torch.manual_seed(0)
    path = tmp_path / "px.pt"
    save_context(
        AnyOrderContext(2, M, CH), path,
        {"kind": "anyorder", "patch": 2, "latent_channels": M, "hyper_channels": CH, "model_hash": "t"},
    )  # fmt: skip
    ctx, cmeta = load_context(path)
    rng = np.random.default_rng(0)
    img = data.to_tensor(np.clip(np.cumsum(rng.normal(0, 6, (70, 90, 3)), 1) + 100, 0, 255).astype(np.uint8))
    enc = streams.encode(img, base, meta["hash"], ctx, cmeta, o.paper_order(2))
    assert enc.y_hat.abs().sum() > 0
    return enc.stream, base, meta, ctx, cmeta


def crafted(stream: bytes, **changes) -> bytes:
    """The stream with header fields replaced and a valid container CRC: what an attacker who
    knows the format can write."""
    header, z_words, y_words = container.unpack(stream)
    return container.pack({**header, **changes}, z_words, y_words)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"order": "0,1;2,99999999999"}, "out of range"),
        ({"order": "0,1;2,1000000"}, "out of range"),
        ({"order": ",".join(["0"] * 3000)}, "invalid"),
        ({"y_shape": [12, 3000, 3000]}, "do not fit an image"),
        ({"y_shape": [12, 16, 16], "z_shape": [8, 4, 4], "image": [200, 200]}, "corrupt"),  # agree, wrong
        ({"image": [1, 1]}, "do not fit an image"),
        ({"image": [-5, 7]}, "image size"),
        ({"image": [10**6, 10**6]}, "megapixels"),
        ({"image": "70x90"}, "image size"),
        ({"z_range": [-(10**9), 10**9]}, "z_range"),
        (
            {
                "image": [4000, 9000],
                "y_shape": [12, 252, 564],
                "z_shape": [8, 63, 141],
                "z_range": [-32768, 32768],
            },
            "too wide",
        ),  # 36 megapixels × a 65,537-symbol ẑ table: 150 GB of rows before
        ({"y_range": [3, 3]}, "empty"),
        ({"precision": "float64"}, "precision"),
        ({"device": "tpu"}, "device"),
        ({"coder": {"name": "gaussian"}}, "corrupt"),
        ({"context": {"kind": "anyorder", "patch": 10**9, "hash": "x"}}, "context patch"),
        ({"y_crc": -1}, "y_crc"),
        ({"y_crc": 12345}, "checksum"),
        ({"context": {"kind": "anyorder", "patch": 2, "hash": "x", "mixture": None}}, "context mixture"),
        ({"context": {"kind": "anyorder", "patch": 2, "hash": "x", "mixture": [3]}}, "context mixture"),
    ],
)
def test_crafted_headers_are_refused(stream, changes, message):
    s, base, meta, ctx, cmeta = stream
    t = time.perf_counter()
    with pytest.raises(UserError, match=message) as err:
        streams.decode(crafted(s, **changes), base, meta["hash"], ctx, cmeta)
    assert time.perf_counter() - t < 5
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_crafted_header_within_bounded_memory(tmp_path, stream, tiny_ckpt):
    """The stream that once allocated 24 GB is refused by the command line under a 4 GB
    address-space limit, in one line."""
    s, *_ = stream
    bad = tmp_path / "bad.oopt"
    bad.write_bytes(crafted(s, order="0,1;2,99999999999"))
    limit = 4 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    r = subprocess.run(
        [sys.executable, "-m", "orderopt.codec", "decode", str(bad), str(tmp_path / "out.png"), "--model",
         str(tiny_ckpt)],
        capture_output=True, text=True, preexec_fn=cap, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "out of range" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out.png").exists()


@pytest.fixture
def mixture_stream(stream):
    """The crafted-stream fixture's image coded with the mixture coder (any model: K = 1 too)."""
    _, base, meta, ctx, cmeta = stream
    rng = np.random.default_rng(0)
    img = data.to_tensor(np.clip(np.cumsum(rng.normal(0, 6, (70, 90, 3)), 1) + 100, 0, 255).astype(np.uint8))
    enc = streams.encode(img, base, meta["hash"], ctx, cmeta, o.paper_order(2), coder="mixture")
    return enc.stream, base, meta, ctx, cmeta


def test_crafted_symbol_range_cannot_make_mixture_decoding_slow(mixture_stream):
    """The mixture coder's work grows with the header's ŷ range: a range wider than any trained
    model's is refused at once instead of building tables over 65,537 symbols per latent."""
    s, base, meta, ctx, cmeta = mixture_stream
    assert streams.decode(s, base, meta["hash"], ctx, cmeta).y_hat is not None
    t = time.perf_counter()
    with pytest.raises(UserError, match="mixture coder"):
        streams.decode(crafted(s, y_range=[-32768, 32768]), base, meta["hash"], ctx, cmeta)
    assert time.perf_counter() - t < 2


def test_garbage_mixture_and_gaussian_payloads_are_one_line_errors(stream, mixture_stream):
    """constriction's decoders assert on data no model could have coded: a one-line error."""
    for s, base, meta, ctx, cmeta in (mixture_stream, stream):
        header, z_words, y_words = container.unpack(s)
        if header["coder"]["name"] != "mixture":  # the rans stream, read by constriction's Gaussian coder
            header = {**header, "coder": {"name": "gaussian"}}
        bad = container.pack(header, z_words, np.full_like(y_words, 0xFFFFFFFF))
        with pytest.raises(UserError, match="corrupt") as err:
            streams.decode(bad, base, meta["hash"], ctx, cmeta)
        assert "\n" not in str(err.value)


def test_runs_made_before_the_mixture_option_keep_their_settings_key():
    """A finished Gaussian run is reused by the same command: its settings key does not change
    when options with defaults are added (the committed runs' manifests hold their keys)."""
    import argparse
    import json
    from pathlib import Path

    from orderopt.results import settings_key

    root = Path(__file__).resolve().parents[1] / "results"
    for run in ("search-patch4", "search-patch4-dp", "search-patch2-q3", "search-patch4-mix3"):
        m = json.loads((root / run / "manifest.json").read_text())
        assert settings_key(argparse.Namespace(**m["arguments"])) == m["settings_key"], run


def test_container_crc_still_guards_random_damage(stream):
    s, base, meta, ctx, cmeta = stream
    b = bytearray(s)
    b[len(b) // 2] ^= 0x40
    with pytest.raises(UserError, match="corrupt"):
        streams.decode(bytes(b), base, meta["hash"], ctx, cmeta)
    assert zlib.crc32(s) != zlib.crc32(bytes(b))


# --- images ------------------------------------------------------------------------------------
def test_decompression_bomb_png_is_one_line_error(tmp_path):
    """A 20000×20000 all-black PNG is a few hundred KB on disk and 1.2 GB decoded."""
    bomb = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UserError, match="400.0 megapixels.*ORDEROPT_MAX_MEGAPIXELS"):
        data.read_rgb(bomb)


def test_image_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    monkeypatch.setenv(data.MAX_MEGAPIXELS_ENV, "0.01")
    with pytest.raises(UserError, match="above the limit of 0.01"):
        data.read_rgb(path)
    monkeypatch.setenv(data.MAX_MEGAPIXELS_ENV, "1")
    assert data.read_rgb(path).shape == (100, 120, 3)
    for bad in ("abc", "-1", "inf", "nan"):
        monkeypatch.setenv(data.MAX_MEGAPIXELS_ENV, bad)
        with pytest.raises(UserError, match="megapixels"):
            data.read_rgb(path)


def test_16_bit_grayscale_keeps_its_tones(tmp_path):
    """Pillow's convert('RGB') clips 16-bit samples (91% of a natural image became 255)."""
    ramp = np.linspace(0, 65535, 96 * 96).reshape(96, 96).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    rgb = data.read_rgb(path)
    assert rgb.shape == (96, 96, 3) and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    expected = np.round(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 1], expected)
    assert (rgb == 255).mean() < 0.01


def test_output_paths_that_cannot_be_written(tmp_path):
    from orderopt.files import write_json

    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a folder"):
        write_json({}, tmp_path / "dir")
    with pytest.raises(UserError, match="lies under a file"):
        write_json({}, tmp_path / "file" / "out.json")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(UserError, match="permission denied"):
            write_json({}, ro / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "ro"][: 2 + (os.geteuid() != 0)]


# --- careless inputs ---------------------------------------------------------------------------
def test_checkpoint_with_the_right_tag_but_missing_keys(tmp_path):
    path = tmp_path / "half.pt"
    torch.save({"format": "orderopt-context", "version": 1, "kind": "anyorder"}, path)
    with pytest.raises(
        UserError, match="incomplete: it lacks latent_channels, hyper_channels, state_dict, hash"
    ):
        load_context(path)
    torch.save({"format": "orderopt-base", "version": 1, "arch": {"N": 8, "M": 12}}, path)
    with pytest.raises(UserError, match="incomplete"):
        load_model(path)


def test_latents_with_no_pixels_are_refused():
    y = torch.zeros(M, 4, 4)
    with pytest.raises(UserError, match="num_pixels 0"):
        LatentSet((LatentEntry("a", y, torch.zeros(CH, 4, 4), 1.0, 0),), "m", "i")


def test_training_that_diverges_stops_with_an_error(tmp_path):
    lat = tiny_latents()
    model = build_context("autoregressive", M, CH)
    with torch.no_grad():
        model.conv.weight.fill_(float("inf"))
    with pytest.raises(UserError, match="non-finite at step 1"):
        fit_context(model, lat, FitConfig(steps=3, batch=1, crop=8), tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "100000"])
def test_numbers_that_would_crash_training_are_refused(value, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.train", "base", "--images", str(tmp_path), "--out",
         str(tmp_path / "b.pt"), "--threads" if value == "100000" else "--lr", value],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_search_with_bad_inputs_leaves_no_run_folder(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.search", "--patch", "2", "--images", str(tmp_path / "none"), "--out",
         str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and not out.exists(), r.stderr


def test_search_with_a_damaged_manifest_says_so(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text("{not json")
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.search", "--patch", "2", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "damaged" in r.stderr and "--force" in r.stderr and r.stderr.count("\n") == 1


def test_train_context_out_pointing_at_a_base_model_is_refused_and_kept(tmp_path, tiny_ckpt, image_dir):
    before = tiny_ckpt.read_bytes()
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.train", "context", "--kind", "checkerboard", "--train-images",
         str(image_dir), "--model", str(tiny_ckpt), "--cache-dir", str(tmp_path / "cache"), "--steps", "1",
         "--out", str(tiny_ckpt)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "orderopt-base" in r.stderr, r.stderr
    assert tiny_ckpt.read_bytes() == before


def test_search_with_a_damaged_cost_table_says_so(tmp_path, tiny_ckpt, image_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "costs.npz").write_bytes(b"PK\x03\x04 not really a zip")
    proxy = tmp_path / "p.pt"
    torch.manual_seed(0)
    save_context(
        AnyOrderContext(2, M, CH), proxy,
        {"kind": "anyorder", "patch": 2, "latent_channels": M, "hyper_channels": CH, "model_hash": "t"},
    )  # fmt: skip
    r = subprocess.run(
        [sys.executable, "-m", "orderopt.search", "--patch", "2", "--model", str(tiny_ckpt), "--images",
         str(image_dir), "--cache-dir", str(tmp_path / "cache"), "--proxy", str(proxy), "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    err = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.returncode == 2 and len(err) == 1 and "costs.npz" in err[0] and "--force" in err[0]
    assert "Traceback" not in r.stderr


def test_image_over_the_limit_says_so_not_truncated(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    monkeypatch.setenv(data.MAX_MEGAPIXELS_ENV, "0.001")
    with pytest.raises(UserError) as err:
        data.read_rgb(path)
    assert "above the limit" in str(err.value) and "truncated" not in str(err.value)
