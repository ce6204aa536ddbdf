"""Why the synthesis runs channels-last: g_s timed on ŷ in the default layout and channels-last.

For each embedded photograph, ŷ of the shipped base model goes through g_s in both memory
layouts, in turns, ``--repeat`` times; the medians are reported. ``HyperpriorCodec.synthesize``
always uses the channels-last form (from a canonical copy of ŷ, so that every decoder gets the
same pixels). Writes results/synthesis_layout.{json,md}.

    python experiments/synthesis_layout.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from outputs import save_results
from timing import median_seconds

from orderopt import data
from orderopt.devices import device_name
from orderopt.model import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=7, help="timings per image and layout (default: 7)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base, meta = load_model()
    rows = []
    with torch.no_grad():
        for im in data.load_images(None):
            y = base.analyze(data.pad_to_multiple(im.image[None])[0]).y_hat
            layouts = {"default": y.contiguous(), "channels_last": y.clone(memory_format=torch.channels_last)}
            times = {name: [] for name in layouts}
            for v in layouts.values():
                base.g_s(v)  # warm-up
            for _ in range(args.repeat):  # the layouts take turns
                for name, v in layouts.items():
                    times[name].append(median_seconds(lambda v=v: base.g_s(v), repeat=1, warmup=False))
            row = {"image": im.name, **{f"{k}_s": statistics.median(t) for k, t in times.items()}}
            row["speedup"] = row["default_s"] / row["channels_last_s"]
            rows.append(row)
            print(f"{im.name:12s} default {1e3 * row['default_s']:.1f} ms, channels-last "
                  f"{1e3 * row['channels_last_s']:.1f} ms ({row['speedup']:.2f}×)")  # fmt: skip
    result = {
        "device": device_name("cpu"),
        "torch": torch.__version__,
        "model_hash": meta["hash"],
        "repeat": args.repeat,
        "rows": rows,
        "command": "python experiments/synthesis_layout.py",
    }
    lines = ["| image | default layout (ms) | channels-last (ms) | speed-up |", "|---|---|---|---|"]
    for r in rows:
        ms = f"{1e3 * r['default_s']:.1f} | {1e3 * r['channels_last_s']:.1f}"
        lines.append(f"| {r['image']} | {ms} | {r['speedup']:.2f}× |")
    text = (
        f"# Synthesis g_s by memory layout ({result['device']}, torch {result['torch']})\n\n"
        f"Median of {args.repeat} timings per image, the layouts taking turns. "
        f"Regenerate: `{result['command']}`.\n\n" + "\n".join(lines) + "\n"
    )
    save_results(result, text, args.out, "synthesis_layout")


if __name__ == "__main__":
    main()
