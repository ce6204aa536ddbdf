"""Speed of the rate engine at the shipped model's size, on this machine's CPU (or GPU).

1. Cost-table throughput: decoded sets S per second for k = 2, 3, 4 with the proxy's
   decomposed evaluation (ProxyOracle) on the embedded photographs' latents, against the
   plain way (one proxy forward pass per S and image), and the time of the full 4×4 table.
2. Strided against naive evaluation of a 4×4 multistage model (paper order) on a 768×512
   image's latent (48×32): one strided convolution per in-patch position against 16 full
   masked convolutions. The ideal ratio is 16.

Writes results/bench_context.{json,md} (``bench_context_cuda.*`` with --device cuda).
    python experiments/bench_context.py [--out results] [--device cuda] [--model CKPT] [--images DIR]
"""

from __future__ import annotations

import argparse
import time

import torch
from outputs import save_results
from timing import median_seconds

from orderopt import data
from orderopt import orders as od
from orderopt.context import AnyOrderContext, MultistageContext
from orderopt.costs import ProxyOracle
from orderopt.devices import add_device_option, device_name, torch_device
from orderopt.latents import extract_latents
from orderopt.model import load_model


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    add_device_option(p, "cpu")
    p.add_argument("--model", help="base-model checkpoint (default: the shipped model)")
    p.add_argument(
        "--images", help="image folder whose latents are rated (default: the embedded photographs)"
    )
    args = p.parse_args()
    device = torch_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, meta = load_model(args.model)
    lat = extract_latents(model, data.load_images(args.images), meta["hash"], progress=False)
    m, c = lat.latent_channels, lat.hyper_channels
    result: dict = {
        "device": device_name(device),
        "torch": torch.__version__,
        "latent_channels": m,
        "latents": {e.name: list(e.y_hat.shape[1:]) for e in lat.entries},
        "cost_table": {},
    }
    on_device = [(e.y_hat[None].to(device), e.hyper[None].to(device)) for e in lat.entries]
    for k, n_subsets in [(2, 16), (3, 512), (4, 1024)]:
        proxy = AnyOrderContext(k, m, c).eval()  # speed does not depend on the weights
        t0 = time.perf_counter()
        oracle = ProxyOracle(proxy, lat, device=device)  # moves the proxy to the device
        setup = time.perf_counter() - t0
        subsets = list(range(n_subsets))
        t = median_seconds(lambda o=oracle, s=subsets: o.costs(s), repeat=3 if k < 4 else 1, device=device)
        rate = n_subsets / t

        def plain(proxy=proxy, n=8):
            for s in range(n):
                for y, h in on_device:
                    proxy(y, h, s)

        plain_rate = 8 / median_seconds(plain, repeat=2, device=device)
        result["cost_table"][f"{k}x{k}"] = {
            "subsets_per_s": rate,
            "plain_forward_subsets_per_s": plain_rate,
            "speedup": rate / plain_rate,
            "setup_s": setup,
            "full_table_subsets": 2 ** (k * k),
            "full_table_s": setup + 2 ** (k * k) / rate,
        }
        print(
            f"{k}×{k}: {rate:.1f} subsets/s (plain {plain_rate:.2f}/s), "
            f"full table {2 ** (k * k) / rate:.1f} s"
        )
    ms = MultistageContext(od.paper_order(4), m, c).eval().to(device)
    y = torch.randn(1, m, 32, 48, device=device).round()
    strided = median_seconds(lambda: ms.context_strided(y), repeat=10, device=device)
    fused = median_seconds(lambda: ms.context_fused(y), repeat=10, device=device)
    unfolded = median_seconds(lambda: ms.context_unfolded(y), repeat=10, device=device)
    naive = median_seconds(lambda: ms.context_naive(y), repeat=5, device=device)
    full_conv = median_seconds(
        lambda: torch.nn.functional.conv2d(y, ms.weight[0], ms.bias[0], padding=2), repeat=10, device=device
    )
    result["multistage_4x4"] = {
        "latent": [32, 48],
        "strided_s": strided,
        "fused_s": fused,
        "unfolded_s": unfolded,
        "naive_s": naive,
        "one_full_conv_s": full_conv,
        "naive_over_strided": naive / strided,
        "strided_over_one_conv": strided / full_conv,
        "fused_over_one_conv": fused / full_conv,
    }
    print(
        f"4×4 multistage context: strided {strided * 1e3:.2f} ms, fused {fused * 1e3:.2f} ms, "
        f"unfolded {unfolded * 1e3:.2f} ms, "
        f"naive {naive * 1e3:.2f} ms, "
        f"ratio {naive / strided:.1f} (ideal 16); one full conv {full_conv * 1e3:.2f} ms"
    )
    # Training: forward and backward of every exact form at the shipped training batch.
    result["training_forms_ms"] = {}
    for k in (2, 3, 4):
        model = MultistageContext(od.raster(k), m, c).to(device)
        yb = torch.randn(16, m, 16, 16, device=device).round()
        row = {}
        for form in ("strided", "unfolded", "fused"):
            fn = getattr(model, f"context_{form}")

            def step(fn=fn, model=model, yb=yb):
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():  # main() runs under no_grad
                    fn(yb).sum().backward()

            row[form] = 1e3 * median_seconds(step, repeat=5, device=device)
        result["training_forms_ms"][f"{k}x{k}"] = row
        print(f"{k}×{k} training forward+backward (ms): " + ", ".join(f"{f} {v:.1f}" for f, v in row.items()))
    result["command"] = (
        "python experiments/bench_context.py"
        + (f" --device {args.device}" if device.type != "cpu" else "")
        + (f" --model {args.model}" if args.model else "")
        + (f" --images {args.images}" if args.images else "")
    )
    where = f"images in {args.images}" if args.images else "embedded photographs"
    stem = "bench_context" if device.type == "cpu" else f"bench_context_{device.type}"
    rows = "\n".join(
        f"| {k} | {v['subsets_per_s']:.1f} | {v['plain_forward_subsets_per_s']:.2f} | {v['speedup']:.0f}× | "
        f"{v['full_table_subsets']} | {v['full_table_s']:.1f} |"
        for k, v in result["cost_table"].items()
    )
    ms_r = result["multistage_4x4"]
    text = (
        f"# Rate-engine speed ({result['device']}, torch {result['torch']}, M = {m})\n\n"
        f"Regenerate: `{result['command']}`. Latents of the {len(lat)} {where}.\n\n"
        "| patch | cost-table subsets/s | plain forward subsets/s | speed-up | subsets in full table | "
        "full table (s) |\n|---|---|---|---|---|---|\n" + rows + "\n\n"
        f"4×4 multistage model on a 48×32 latent: strided {ms_r['strided_s'] * 1e3:.2f} ms, naive "
        f"{ms_r['naive_s'] * 1e3:.2f} ms: **{ms_r['naive_over_strided']:.1f}×** (ideal 16); "
        "the strided form costs "
        f"{ms_r['strided_over_one_conv']:.2f}× one full 5×5 convolution, the fused form (one "
        f"convolution of stride 4) {ms_r['fused_s'] * 1e3:.2f} ms = "
        f"{ms_r['fused_over_one_conv']:.2f}×, the unfolded form (one batched matrix product) "
        f"{ms_r['unfolded_s'] * 1e3:.2f} ms.\n\n"
        "Training, forward + backward of the context features (batch 16 of 16×16 latents, ms):\n\n"
        "| patch | strided | unfolded | fused |\n|---|---|---|---|\n"
        + "\n".join(
            f"| {k} | {v['strided']:.1f} | {v['unfolded']:.1f} | {v['fused']:.1f} |"
            for k, v in result["training_forms_ms"].items()
        )
        + "\n\n`MultistageContext.context` uses the unfolded form on GPUs; on CPUs the strided "
        "one, except for training patches of 4×4 and more (unfolded).\n"
    )
    save_results(result, text, args.out, stem)


if __name__ == "__main__":
    main()
