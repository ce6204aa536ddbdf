"""Torch devices from command-line names: checked, with one-line errors for bad ones."""

from __future__ import annotations

import argparse
import os
import platform

import torch

from .errors import UserError

# CPU kernels that every x86-64 machine of the last decade runs: oneDNN (convolutions) and ATen
# (element-wise maths, reductions) pick wider vector code on AVX-512 machines, whose floats round
# differently, so a stream coded on one machine would not decode on the other.
PORTABLE_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def pin_portable_kernels() -> None:
    """Cap torch's CPU kernels at AVX2 (:data:`PORTABLE_KERNELS`) unless the environment sets
    its own cap. It takes effect only before torch runs its first CPU kernel (both libraries
    read the variables once), so entry points call it first; x86-64 only."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in PORTABLE_KERNELS.items():
            os.environ.setdefault(name, value)


def cpu_kernels() -> str:
    """The CPU kernels this process runs, as a stream header records them: ATen's vector
    capability and oneDNN's ISA cap (``native``: none, the widest the CPU has)."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "native").upper()
    return f"aten={torch.backends.cpu.get_cpu_capability()},onednn={onednn}"


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
