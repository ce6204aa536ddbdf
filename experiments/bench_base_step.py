"""Time of one base-model training step (forward, backward, Adam) by architecture and precision.

float32 against bfloat16 autocast (channels-last, likelihoods in float32: what
``train base --precision`` runs), batch 8 of 128×128 crops, median of the timed steps after
warm-up. Whether bfloat16 pays depends on the CPU: with AVX-512 BF16 / AMX oneDNN runs the
convolutions in bfloat16; without, they fall back to slow reference kernels.

    python experiments/bench_base_step.py [--steps 3] [--out results]
        [--arch 96,128 128,192] [--batch 8] [--crop 128] [--warmup 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from outputs import save_results

from orderopt.model import HyperpriorCodec, rd_loss

ARCHS = [(96, 128), (128, 192)]


def step_seconds(
    n: int, m: int, precision: str, steps: int, warmup: int = 2, batch: int = 8, crop: int = 128
) -> float:
    torch.manual_seed(0)
    model = HyperpriorCodec(n, m).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.rand(batch, 3, crop, crop).to(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            out = model(x)
        loss = rd_loss(out, x, 0.0067)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def arch(text: str) -> tuple[int, int]:
    """``N,M`` → (N, M)."""
    try:
        n, m = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M (two integers), got {text!r}") from None
    return n, m


def cpu_flags() -> list[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in flags if f.startswith(("avx512", "amx")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (default 3)")
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.add_argument(
        "--arch",
        nargs="+",
        type=arch,
        default=ARCHS,
        metavar="N,M",
        help="architectures timed (default: " + " ".join(f"{n},{m}" for n, m in ARCHS) + ")",
    )
    p.add_argument("--batch", type=int, default=8, help="crops per step (default 8)")
    p.add_argument(
        "--crop", type=int, default=128, help="crop side in pixels, a multiple of 64 (default 128)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones (default 2)")
    args = p.parse_args()
    rows = []
    for n, m in args.arch:
        for precision in ("float32", "bfloat16"):
            step_s = step_seconds(n, m, precision, args.steps, args.warmup, args.batch, args.crop)
            rows.append({"N": n, "M": m, "precision": precision, "step_s": step_s})
            print(rows[-1])
    flags = cpu_flags()
    device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    command = "python experiments/bench_base_step.py" + "".join(
        f" --{name} {value}"
        for name, value, default in (
            ("steps", args.steps, 3),
            ("arch", " ".join(f"{n},{m}" for n, m in args.arch), " ".join(f"{n},{m}" for n, m in ARCHS)),
            ("batch", args.batch, 8),
            ("crop", args.crop, 128),
            ("warmup", args.warmup, 2),
        )
        if value != default
    )
    result = {"device": device, "cpu_flags": flags, "torch": torch.__version__, "rows": rows,
              "command": command}  # fmt: skip
    lines = [
        f"# Base-model training step ({device}, torch {torch.__version__})",
        "",
        f"Regenerate: `{command}`. Batch {args.batch} of {args.crop}×{args.crop} crops, median of "
        f"{args.steps} steps after {args.warmup} warm-up steps. AVX-512/AMX flags: "
        f"{', '.join(flags) or 'none'}.",
        "",
        "| N | M | precision | s per step |",
        "|---|---|---|---|",
        *[f"| {r['N']} | {r['M']} | {r['precision']} | {r['step_s']:.3f} |" for r in rows],
    ]
    save_results(result, "\n".join(lines) + "\n", args.out, "bench_base_step")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
