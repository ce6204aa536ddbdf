"""Torch devices from command-line names: checked, with one-line errors for bad ones."""

from __future__ import annotations

import argparse
import os
import platform
import re

import torch

from .errors import UserError

# The variables that choose torch's CPU kernels, whose floats round differently from one choice
# to another: ATen's vector code (element-wise maths, reductions), oneDNN's ISA (convolutions) and
# MKL's code path (matrix products). A stream decodes only with the kernels it was encoded with.
# By their short names in a stream header, which records only the ones that are set.
SHORT_NAMES = {"aten": "ATEN_CPU_CAPABILITY", "onednn": "ONEDNN_MAX_CPU_ISA", "mkl": "MKL_CBWR"}
KERNEL_VARS = tuple(SHORT_NAMES.values())
# What every x86-64 machine with AVX2 runs. MKL promises the same results across Intel CPUs under
# AVX2, and across vendors only under COMPATIBLE (several times slower products): set it to that.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
_PAIR = rf"(?:{'|'.join(SHORT_NAMES)})=[A-Za-z0-9_,]{{1,40}}"
KERNELS_PATTERN = re.compile(rf"{_PAIR}(?: {_PAIR}){{0,2}}")  # a header's kernels, and no other text


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _aten_runs(value: str) -> bool:
    """Whether this CPU can run ATen's ``value`` kernels (torch believes any value it is given,
    and an AVX2 one on a CPU without AVX2 dies of an illegal instruction)."""
    checks = {"avx512": torch.cpu._is_avx512_supported, "avx2": torch.cpu._is_avx2_supported}
    return value.lower() == "default" or (value.lower() in checks and checks[value.lower()]())


def pin_kernels(kernels: dict[str, str] | None = None) -> None:
    """Choose torch's CPU kernels, variable by variable (default :data:`PORTABLE_KERNELS`; one
    left out stays the CPU's own) unless the environment has chosen them; x86-64 only. Both
    libraries read the variables once, before their first kernel, so entry points call this first."""
    if not _x86():
        return
    for name, value in (PORTABLE_KERNELS if kernels is None else kernels).items():
        if name != "ATEN_CPU_CAPABILITY" or _aten_runs(value):
            os.environ.setdefault(name, value)


def cpu_kernels() -> str:
    """The CPU kernels of this process as a stream header records them, short ``name=value``
    pairs (:data:`SHORT_NAMES`): ATen's capability as torch reports it, oneDNN's and MKL's caps
    where the environment sets them (read when their first kernel ran; absent: the CPU's own)."""
    caps = {"aten": torch.backends.cpu.get_cpu_capability().lower()}
    caps.update({k: os.environ[n].upper() for k, n in list(SHORT_NAMES.items())[1:] if os.environ.get(n)})
    return " ".join(f"{k}={v}" for k, v in caps.items())


def parse_kernels(text: str) -> dict[str, str]:
    """The variables of a header's kernels (checked by :data:`KERNELS_PATTERN`), by full name."""
    return {SHORT_NAMES[k]: v for k, v in (pair.split("=", 1) for pair in text.split())}


def torch_device(name: str = "auto", deterministic: bool = False) -> torch.device:
    """The device called ``name`` (auto: a CUDA GPU if there is one, else the CPU).

    ``deterministic`` asks cuDNN for deterministic kernels, so that two runs (an encoder and
    its decoder) compute bit-identical results on the same GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda (or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported; use auto, cpu or cuda (or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} is not available here (no CUDA GPU); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UserError(f"device {name} does not exist: this machine has {count} GPU(s)")
        if deterministic:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
    return device


def device_name(device: str | torch.device) -> str:
    """A readable name for results files: the GPU's model, or the CPU and its thread count."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto", what: str = "") -> None:
    """The ``--device`` option every command shares; ``what`` says what runs there."""
    parser.add_argument(
        "--device",
        default=default,
        help=f"torch device{what}: auto (a CUDA GPU if present), cpu, cuda or cuda:N",
    )
