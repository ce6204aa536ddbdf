import numpy as np
import pytest
import torch
from PIL import Image

from orderopt.devices import pin_kernels
from orderopt.model import HyperpriorCodec, make_checkpoint

# The golden digests (tests/test_golden.py) hash float outputs, and AVX-512 kernels round
# differently from AVX2 ones: cap ATen, oneDNN and MKL at AVX2 before any test runs a kernel, so
# that the suite's bytes are the same on AVX2 and AVX-512 machines (CI runs on both).
pin_kernels()

torch.set_num_threads(2)

# Devices to run device-dependent tests on: CUDA ones are skipped where no GPU is present
# (CI), and run on a lent GPU with `python -m pytest -k cuda`.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.fixture
def image_dir(tmp_path):
    """A folder of three small random-texture images (PNG and JPEG, one nested)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for name, size in [("a.png", (96, 80)), ("b.jpg", (64, 70)), ("sub/c.png", (130, 64))]:
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / name)
    return root


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return HyperpriorCodec(N=8, M=12).eval()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_model):
    path = tmp_path / "tiny.pt"
    torch.save(make_checkpoint(tiny_model, 0.01, {"steps": 0}), path)
    return path
