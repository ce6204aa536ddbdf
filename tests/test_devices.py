import pytest
import torch

from orderopt.devices import device_name, torch_device
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
