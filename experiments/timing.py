"""The benchmarks' shared timer (imported by the scripts beside it)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(
    fn: Callable[[], object], repeat: int, device: torch.device | None = None, warmup: bool = True
) -> float:
    """Median wall time of ``repeat`` calls of ``fn``, after one warm-up call unless told not
    to; on a GPU each call waits for the device's work, so the clock sees it."""

    def call() -> None:
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    if warmup:
        call()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
