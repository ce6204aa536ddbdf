import numpy as np
import pytest
import torch
from PIL import Image

from orderopt import data
from orderopt.errors import UserError


def test_find_and_load(image_dir):
    files = data.find_images(image_dir)
    assert [p.name for p in files] == ["a.png", "b.jpg", "c.png"]
    images = data.load_images(image_dir)
    assert [im.name for im in images] == ["a.png", "b.jpg", "sub/c.png"]
    x = images[0].image
    assert x.shape == (3, 80, 96) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert images[2].num_pixels == 130 * 64


def test_embedded_photographs_are_real_colour_images():
    images = data.load_images(None)
    assert [im.name for im in images] == list(data.EMBEDDED)
    for im in images:
        assert im.image.shape[0] == 3 and min(im.image.shape[1:]) >= 300
        assert (im.image[0] - im.image[1]).abs().mean() > 0.01  # colour, not grey


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(UserError, match="no images"):
        data.find_images(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        data.find_images(tmp_path / "nope")


def test_bad_files_are_named(tmp_path, image_dir):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.png.*cannot be decoded"):
        data.load_image(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.jpg"):
        data.load_image(empty)
    full = (image_dir / "a.png").read_bytes()
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match="trunc.png"):
        data.load_image(trunc)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((20, 200, 3), np.uint8)).save(tiny)
    with pytest.raises(UserError, match="tiny.png is 200×20"):
        data.load_image(tiny)
    # one bad file in a folder fails the folder: nothing is skipped silently
    (image_dir / "zz.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="zz.png"):
        data.load_images(image_dir)


def test_pad_and_crop_round_trip():
    x = torch.rand(2, 3, 70, 100)
    p, size = data.pad_to_multiple(x, 64)
    assert p.shape == (2, 3, 128, 128) and size == (70, 100)
    assert torch.equal(data.crop_to(p, size), x)
    assert torch.equal(p[..., 127, 99], x[..., 69, 99])  # edge replication
    q, _ = data.pad_to_multiple(torch.rand(3, 64, 128))
    assert q.shape == (3, 64, 128)


def test_crop_sampler_reproducible(image_dir):
    files = data.find_images(image_dir)
    a = data.CropSampler(files, size=32, seed=1).sample(4)
    b = data.CropSampler(files, size=32, seed=1).sample(4)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)


def test_fingerprint_changes_with_pixels(image_dir):
    images = data.load_images(image_dir)
    h1 = data.images_fingerprint(images)
    images[0].image[0, 0, 0] = 1 - images[0].image[0, 0, 0]
    assert data.images_fingerprint(images) != h1
