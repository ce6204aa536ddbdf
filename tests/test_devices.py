import platform

import pytest
import torch

from orderopt.devices import (
    KERNEL_VARS,
    KERNELS_PATTERN,
    PORTABLE_KERNELS,
    cpu_kernels,
    device_name,
    parse_kernels,
    pin_kernels,
    torch_device,
)
from orderopt.errors import UserError


def test_auto_and_cpu():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_name("cpu").startswith("cpu (")


@pytest.mark.parametrize("name, message", [("tpu", "unknown device"), ("mps", "not supported")])
def test_bad_names_are_user_errors(name, message):
    with pytest.raises(UserError, match=message):
        torch_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is present")
def test_cuda_without_gpu():
    with pytest.raises(UserError, match="no CUDA GPU"):
        torch_device("cuda")


def test_pin_kernels_respects_the_environment_and_the_cpu(monkeypatch):
    """The pin sets the portable caps where the environment has none, keeps a user's own, and
    never asks ATen for vector code this CPU lacks (torch would die of an illegal instruction)."""
    import os

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    for name in KERNEL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    pin_kernels()
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx2" and os.environ["MKL_CBWR"] == "AVX2"
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_AMX"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: False)
    pin_kernels(PORTABLE_KERNELS)
    assert "ATEN_CPU_CAPABILITY" not in os.environ
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    monkeypatch.delenv("MKL_CBWR")
    pin_kernels()
    assert "MKL_CBWR" not in os.environ


def test_cpu_kernels_round_trip_through_a_header():
    text = cpu_kernels()
    assert KERNELS_PATTERN.fullmatch(text)
    caps = parse_kernels(text)  # on x86-64 the suite pins all three (conftest.py)
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert set(caps) == set(KERNEL_VARS) and caps["MKL_CBWR"] == "AVX2"
    assert caps["ATEN_CPU_CAPABILITY"] == torch.backends.cpu.get_cpu_capability().lower()
    assert parse_kernels("aten=avx512") == {"ATEN_CPU_CAPABILITY": "avx512"}
