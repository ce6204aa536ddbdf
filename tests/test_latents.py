import numpy as np
import pytest
import torch

from orderopt import data
from orderopt.errors import UserError
from orderopt.latents import cached_latents, extract_latents, load_latents


def test_extract_shapes(tiny_model, image_dir):
    images = data.load_images(image_dir)
    lat = extract_latents(tiny_model, images, "h", progress=False)
    assert lat.latent_channels == 12 and lat.hyper_channels == 24 and len(lat) == 3
    e = lat.entries[2]  # 130×64 image padded to 192×64
    assert e.y_hat.shape == (12, 4, 12) and e.num_pixels == 130 * 64 and e.z_bits > 0


def test_cache_round_trip_and_reuse(tmp_path, tiny_model, image_dir):
    images = data.load_images(image_dir)
    lat, path = cached_latents(tiny_model, "m1", images, tmp_path, progress=False)
    again = load_latents(path)
    for a, b in zip(lat.entries, again.entries, strict=True):
        assert a.name == b.name and a.num_pixels == b.num_pixels and a.z_bits == b.z_bits
        assert torch.equal(a.y_hat, b.y_hat) and torch.equal(a.hyper, b.hyper)
    stamp = path.stat().st_mtime_ns
    _, path2 = cached_latents(tiny_model, "m1", images, tmp_path, progress=False)
    assert path2 == path and path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    _, path3 = cached_latents(tiny_model, "m2", images, tmp_path, progress=False)
    assert path3 != path  # another model, another cache entry
    path.write_bytes(b"damaged")
    lat4, _ = cached_latents(tiny_model, "m1", images, tmp_path, progress=False)
    assert torch.equal(lat4.entries[0].y_hat, lat.entries[0].y_hat)  # rebuilt


def test_external_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "ext.npz"
    y = rng.integers(-3, 4, (2, 5, 6, 6)).astype(np.int16)
    np.savez(path, y_hat=y, hyper=rng.random((2, 10, 6, 6)), num_pixels=np.array([9216, 9216]))
    lat = load_latents(path)
    assert lat.latent_channels == 5 and lat.hyper_channels == 10 and lat.model_hash == "external"
    assert torch.equal(lat.entries[1].y_hat, torch.from_numpy(y[1]).float())
    np.savez(tmp_path / "bad.npz", y_hat=y)
    with pytest.raises(UserError, match="lacks the array"):
        load_latents(tmp_path / "bad.npz")
    np.savez(tmp_path / "frac.npz", y_hat=y + 0.5, hyper=rng.random((2, 10, 6, 6)), num_pixels=[1, 1])
    with pytest.raises(UserError, match="integer"):
        load_latents(tmp_path / "frac.npz")


def test_bad_latent_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_latents(tmp_path / "x.pt")
    (tmp_path / "j.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot be read"):
        load_latents(tmp_path / "j.pt")
    torch.save({"format": "other"}, tmp_path / "o.pt")
    with pytest.raises(UserError, match="not an orderopt latent file"):
        load_latents(tmp_path / "o.pt")
