import pytest
import torch

from orderopt.devices import PORTABLE_KERNELS, cpu_kernels, device_name, pin_portable_kernels, torch_device
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


def test_pin_portable_kernels_respects_the_environment(monkeypatch):
    """The pin sets the AVX2 caps where the environment has none and keeps a user's own."""
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    pin_portable_kernels()
    import os

    assert os.environ["ATEN_CPU_CAPABILITY"] == PORTABLE_KERNELS["ATEN_CPU_CAPABILITY"]
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_AMX"
    assert cpu_kernels().endswith(",onednn=AVX512_CORE_AMX")
