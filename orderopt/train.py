"""Training commands.

    python -m orderopt.train base --images DIR --lmbda L --steps S --out CKPT
    python -m orderopt.train export --ckpt CKPT --out WEIGHTS   (fp16, no optimizer state)
    python -m orderopt.train context --train-images DIR --order "0,1;2,3" --out CKPT
        (or --kind autoregressive|checkerboard|hyperprior, or --proxy --patch K;
        --mixture K: mixtures of K Gaussians per latent instead of one Gaussian)

Training is resumable: run the same command again and it continues from ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import data
from .devices import add_device_option, torch_device
from .errors import HelpFormatter, OneLineErrorParser, UserError, number, run_cli
from .files import check_writable, load_versioned, save_torch
from .model import (
    WEIGHTS_DIR,
    HyperpriorCodec,
    add_model_options,
    check_model_options,
    load_model,
    make_checkpoint,
    rd_loss,
    read_checkpoint,
)


@torch.no_grad()
def validate(
    model: HyperpriorCodec, images: list[torch.Tensor], lmbda: float | None = None
) -> dict[str, float]:
    """Mean bpp (from the likelihoods, ŷ = round(y)) and PSNR over whole images; with ``lmbda``
    also the mean rate–distortion loss λ·255²·MSE + bpp (what ``train base --converge`` watches)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bpps, psnrs, losses = [], [], []
    for x in images:
        x = x.to(device)
        xp, size = data.pad_to_multiple(x[None])
        out = model(xp)
        npix = size[0] * size[1]
        bits = -torch.log2(out["y_likelihood"]).sum() - torch.log2(out["z_likelihood"]).sum()
        mse = torch.mean((data.crop_to(out["x_hat"].clamp(0, 1), size) - x[None]) ** 2)
        bpps.append(float(bits) / npix)
        psnrs.append(float(10 * torch.log10(1 / mse)))
        if lmbda is not None:
            losses.append(lmbda * 255**2 * float(mse) + bpps[-1])
    model.train(was_training)
    out = {"bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))}
    return out if lmbda is None else {**out, "loss": float(np.mean(losses))}


def _lr_at(step: int, total: int, lr: float, time_fraction: float = 0.0) -> float:
    """Constant, then ÷10 for the last 15% of the steps or of the time limit."""
    return lr if step < 0.85 * total and time_fraction < 0.85 else lr * 0.1


class _Prefetch:
    """Draws the next batch of crops in a thread while the model trains on this one.

    ``state()`` is the sampler's state before the pending batch, so a resumed run draws the
    same crops as an uninterrupted one.
    """

    def __init__(self, sampler: data.CropSampler, batch: int):
        from concurrent.futures import ThreadPoolExecutor

        self.sampler, self.batch = sampler, batch
        self.pool = ThreadPoolExecutor(max_workers=1)
        self._submit()

    def _submit(self) -> None:
        self.pending_state = self.sampler.state()
        self.pending = self.pool.submit(self.sampler.sample, self.batch)

    def next(self) -> torch.Tensor:
        x = self.pending.result()
        self._submit()
        return x

    def state(self) -> dict:
        return self.pending_state

    def close(self) -> None:
        self.pending.result()
        self.pool.shutdown()


def _files_id(paths: list[Path]) -> str:
    """A short hash of files' names and sizes: the same images wherever their folder is."""
    import hashlib

    blob = "\n".join(f"{p.name}:{p.stat().st_size}" for p in paths)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_base(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .fit import Plateau

    device = torch_device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed crop size: tuned kernels pay off
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    check_writable(out)
    train_paths = [p for d in args.images for p in data.find_images(d)]
    val_paths = data.find_images(args.val_images)[: args.val_count] if args.val_images else []
    val_images = [data.load_image(p) for p in val_paths]
    if args.converge and not val_images:
        raise UserError("--converge needs --val-images DIR: the validation loss it watches is measured there")
    sampler = data.CropSampler(train_paths, size=args.crop, seed=args.seed)
    model = HyperpriorCodec(args.N, args.M).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step, history, init_history = 0, [], []
    plateau = Plateau(args.converge, min_delta=args.min_delta, drops=args.lr_drops) if args.converge else None
    # what a resumed --converge run must share: the rule, how often, on which images (their names
    # and sizes, wherever the folder is), and the training settings an uninterrupted run keeps
    rule = None
    if plateau is not None:
        rule = {
            **plateau.rule(),
            "every": args.val_every,
            "metric": "loss",
            "val_images": _files_id(val_paths),
        }
        rule.update(lr=args.lr, batch=args.batch, crop=args.crop)
    resumed = False
    lowest_state: dict | None = None  # weights at the lowest validation loss (--converge)
    if out.exists():
        ckpt = read_checkpoint(out)
        state = ckpt.get("train_state")
        if state is None:
            raise UserError(f"{out} holds no training state (an exported model?); choose another --out")
        if ckpt["arch"] != model.arch or ckpt["lmbda"] != args.lmbda:
            raise UserError(
                f"{out} was trained with {ckpt['arch']} and lambda {ckpt['lmbda']}, not {model.arch} and "
                f"lambda {args.lmbda}; choose another --out or the same settings to resume"
            )
        saved = state.get("plateau_rule")
        if saved != rule:
            # a --converge run's history decides its future: never silently change its rule
            differ = sorted(
                k for k in {**(saved or {}), **(rule or {})} if (saved or {}).get(k) != (rule or {}).get(k)
            )
            raise UserError(
                f"{out} was trained with another --converge rule ({', '.join(differ) or 'none'} "
                f"differ{'s' if len(differ) == 1 else ''}); resume it with the same options or choose "
                "another --out"
            )
        resumed = True
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step, history = state["step"], ckpt["training"].get("validation", [])
        init_history = ckpt["training"].get("init_validation", [])
        if plateau is not None:
            for k, v in state["plateau"].items():
                setattr(plateau, k, v)
            lowest_state = state.get("lowest_state")
        print(f"resuming {out} at step {step}")
    elif args.init:
        init = read_checkpoint(args.init)
        if init["arch"] != model.arch:
            raise UserError(f"--init {args.init} has architecture {init['arch']}, not {model.arch}")
        model.load_state_dict({k: v.float() for k, v in init["state_dict"].items()})
        # a converged run's weights are those of its lowest validation loss, not of its last step
        t = init["training"]
        step = int(t.get("weights_step", t.get("steps", 0)))
        inherited = [p for p in t.get("validation", []) if p["step"] <= step]
        if plateau is None:
            history = inherited
        else:  # this run's points alone drive its rule; the earlier ones are kept apart
            init_history = [*t.get("init_validation", []), *inherited]
        print(f"starting from the weights of {args.init} (step {step}, fresh optimizer state)")

    prefetch = _Prefetch(sampler, args.batch)

    def save() -> None:
        training = {
            "images": [str(d) for d in args.images],
            "num_images": len(train_paths),
            "val_images": str(args.val_images) if args.val_images else None,
            "steps": step,
            "batch": args.batch,
            "crop": args.crop,
            "lr": args.lr,
            "seed": args.seed,
            "validation": history,
        }
        if plateau is not None:
            training["convergence"] = {**rule, **asdict(plateau)}
            if plateau.converged:  # the weights kept are those of the lowest validation loss
                training["weights_step"] = plateau.lowest_step
        if init_history:
            training["init_validation"] = init_history
        ckpt = make_checkpoint(model, args.lmbda, training)
        ckpt["train_state"] = {
            "step": step,
            "optimizer": opt.state_dict(),
            "sampler": prefetch.state(),
            "torch_rng": torch.get_rng_state(),
            "plateau_rule": rule,
        }
        if plateau is not None:
            ckpt["train_state"].update(plateau=asdict(plateau), lowest_state=lowest_state)
        save_torch(ckpt, out)

    def validation_point() -> bool:
        """Validates, records the point (with the plateau's event); True when it says stop."""
        nonlocal lowest_state
        v = validate(model, val_images, args.lmbda if plateau is not None else None)
        point = {"step": step, **v, "elapsed_s": round(time.time() - t0, 1)}
        history.append(point)
        stop = False
        if plateau is not None:
            event = plateau.update(step, v["loss"])
            point.update(event=event, lr=args.lr * plateau.lr_scale)
            if plateau.lowest_step == step:
                lowest_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            stop = event == "stop"
        bar.write(json.dumps(point))
        return stop

    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="train base", unit="step", dynamic_ncols=True)
    t0, running = time.time(), []
    time_limit = args.time_limit or float("inf")
    if plateau is not None and not resumed:
        validation_point()  # the starting weights (--init's, say) are the first to beat
    while step < args.steps and not (plateau is not None and plateau.converged):
        for g in opt.param_groups:
            g["lr"] = (
                args.lr * plateau.lr_scale
                if plateau is not None
                else _lr_at(step, args.steps, args.lr, (time.time() - t0) / time_limit)
            )
        x = prefetch.next().to(device, memory_format=torch.channels_last, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bfloat16"):
            result = model(x)
        losses = rd_loss(result, x, args.lmbda)
        if not torch.isfinite(losses["loss"]):
            raise UserError(
                f"the loss became non-finite at step {step + 1}; the last checkpoint in {out} is kept. "
                "Lower --lr, or train in --precision float32"
            )
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running.append(tuple(float(losses[k].detach()) for k in ("loss", "bpp", "mse")))
        bar.update(1)
        if step % 50 == 0:
            loss, bpp, mse = np.mean(running[-50:], axis=0)
            bar.set_postfix(loss=f"{loss:.3f}", bpp=f"{bpp:.3f}", psnr=f"{10 * np.log10(1 / mse):.2f}")
        last = step == args.steps or time.time() - t0 >= time_limit
        stop = False
        if val_images and (step % args.val_every == 0 or (last and plateau is None)):
            stop = validation_point()
        # a stopped run is saved below, with the weights of its lowest validation loss
        if (step % args.ckpt_every == 0 or last) and not stop:
            save()
        if last or stop:
            break
    bar.close()
    prefetch.close()
    if plateau is not None and plateau.converged and lowest_state is not None:
        model.load_state_dict(lowest_state)  # early stopping: the validation best, not the last
        print(f"converged: kept the weights of step {plateau.lowest_step} (loss {plateau.lowest:.4f})")
    save()
    if step < args.steps and not (plateau is not None and plateau.converged):
        print(f"stopped at step {step} after the --time-limit of {args.time_limit:g} s; run again to go on")
    return 0


def export(args: argparse.Namespace) -> int:
    """Strip a training checkpoint (base or context model) to fp16 weights plus metadata."""
    if _is_context_file(args.ckpt):
        from .fit import load_context, save_context

        model, meta = load_context(args.ckpt)
        save_context(model, Path(args.out), meta, half=True)
        print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB)")
        return 0
    ckpt = read_checkpoint(args.ckpt)
    model = HyperpriorCodec(**ckpt["arch"])
    model.load_state_dict(ckpt["state_dict"])
    shipped = make_checkpoint(model, ckpt["lmbda"], ckpt["training"], half=True)
    save_torch(shipped, Path(args.out))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB, hash {shipped['hash']})")
    return 0


def latent_set(
    images: list[str] | None,
    latents: str | None,
    model_path: str | None,
    cache_dir: str | None,
    what: str,
    quality: int | None = None,
):
    """Latents from a latent file, or extracted (and cached) from images with the base model."""
    from .latents import cached_latents, load_image_folders, load_latents

    if latents:
        return load_latents(latents)
    if what == "training" and not images:
        raise UserError("give --train-images DIR (or --train-latents FILE) to train a context model on")
    model, meta = load_model(model_path, quality)
    return cached_latents(model, meta["hash"], load_image_folders(images), cache_dir)[0]


def train_context(args: argparse.Namespace) -> int:
    from . import orders
    from .context import dedicated
    from .costs import CostTable, ProxyOracle
    from .files import write_json
    from .fit import (
        CONTEXT_KEYS,
        FORMAT,
        IDENTITY,
        VERSION,
        FitConfig,
        HeldOut,
        Plateau,
        build_context,
        fit_context,
        measure,
        with_mixture,
    )

    device = torch_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = [args.order is not None, args.kind is not None, args.proxy]
    if sum(chosen) != 1:
        raise UserError("choose exactly one of --order, --kind and --proxy")
    check_writable(args.out)
    if args.converge and not args.eval_every:
        raise UserError("--converge needs --eval-every N: the held-out rate it watches is measured then")
    resumed = None
    if Path(args.out).exists():  # resumed from: a context checkpoint (never unpickled code), before any work
        resumed = load_versioned(args.out, FORMAT, VERSION, "context checkpoint", required=CONTEXT_KEYS)
    if args.kind:
        spec = {"checkerboard": orders.checkerboard(), "hyperprior": orders.hyperprior_only()}.get(
            args.kind, args.kind
        )
    elif args.order is not None:
        spec = orders.DecodingOrder.parse(args.order)
    # before any latents are extracted; the autoregressive spec is a name, with no patch
    patch = args.patch if args.proxy else getattr(spec, "patch", 1)
    if args.crop < patch:
        raise UserError(
            f"--crop {args.crop} is smaller than the {patch}×{patch} patch; use --crop {patch} or more"
        )
    check_model_options(args)
    train = latent_set(
        args.train_images, args.train_latents, args.model, args.cache_dir, "training", args.quality
    )
    held = latent_set(
        args.eval_images, args.eval_latents, args.model, args.cache_dir, "evaluation", args.quality
    )
    m, c = train.latent_channels, train.hyper_channels
    if (held.latent_channels, held.hyper_channels) != (m, c):
        raise UserError("training and evaluation latents come from different codecs (channel counts differ)")
    torch.manual_seed(args.seed)  # the initial weights too: same seed, same bits
    if args.proxy:
        model = build_context("anyorder", m, c, patch=args.patch, mixture=args.mixture)
        meta = {**model.spec(), "raster_fraction": args.raster_fraction}
    else:
        model = dedicated(spec, m, c, args.mixture)
        meta = model.spec()
    meta.update(latent_channels=m, hyper_channels=c, model_hash=train.model_hash)
    if args.init and not Path(args.out).exists():  # a resumed run continues from its own state
        from .fit import load_context

        try:
            start, start_meta = load_context(args.init)
        except ValueError as err:
            raise UserError(str(err)) from None
        start_meta, wanted = with_mixture(start_meta), {**meta, "mixture": args.mixture}
        differ = [k for k in IDENTITY if k != "model_hash" and start_meta.get(k) != wanted.get(k)]
        if differ:
            raise UserError(
                f"--init {args.init} is another context model ({', '.join(differ)} differ); give one of "
                "the same kind, order, patch, channels and mixture"
            )
        model.load_state_dict(start.state_dict())
        meta["init"] = {"from": str(args.init), "model_hash": start_meta.get("model_hash")}
        if start_meta.get("steps_done") and not Path(args.init).resolve().is_relative_to(
            WEIGHTS_DIR.resolve()
        ):
            # a snapshot of an earlier run (not shipped weights): how far it ran, from where
            meta["init"].update(steps_done=start_meta["steps_done"], init=start_meta.get("init"))
    elif resumed is not None and "init" in resumed:
        meta["init"] = resumed["init"]  # a resumed run keeps the record of where it started
    config = FitConfig(
        steps=args.steps,
        batch=args.batch,
        crop=args.crop,
        lr=args.lr,
        seed=args.seed,
        raster_fraction=args.raster_fraction if args.proxy else 0.0,
    )
    out = Path(args.out)

    def held_out_point() -> dict[str, float]:
        point = _held_out_bits(
            model, held, args.patch if args.proxy else 0, device, config.raster_fraction > 0
        )
        tqdm.write(json.dumps(point))
        return point

    plateau = Plateau(args.converge, min_delta=args.min_delta, drops=args.lr_drops) if args.converge else None
    held_out = None
    if args.eval_every:
        identity = f"{held.model_hash}/{held.images_hash}"
        held_out = HeldOut(held_out_point, args.eval_every, plateau=plateau, identity=identity)
    fit_context(
        model,
        train,
        config,
        checkpoint=out,
        meta=meta,
        desc=f"train {meta['kind']}",
        device=device,
        time_limit=args.time_limit,
        held_out=held_out,
    )
    if args.proxy:
        table = CostTable.from_oracle(ProxyOracle(model, held, device=device))
        refs = {"raster": orders.raster(args.patch), **orders.published_orders(args.patch)}
        result = {
            name: {"order": str(o), "bits_per_latent": table.bits_per_latent(o), "bpp": table.bpp(o)}
            for name, o in refs.items()
        }
        if config.raster_fraction > 0:
            table.fill_raster()
            bits = float(table.raster_image_bits.sum())
            result["autoregressive"] = {
                "order": None,
                "bits_per_latent": bits / table.num_elements,
                "bpp": (bits + table.z_bits) / table.num_pixels,
            }
    else:
        result = measure(model, held)
    report = {**meta, "config": vars(config), "held_out": result}
    if held_out is not None:  # only on request, so that the default report keeps its schema
        report["held_out_curve"] = held_out.curve
    if plateau is not None:
        report["convergence"] = {  # the rule as the checkpoint holds it, and where it ended
            **held_out.rule(),
            "converged": plateau.converged,
            "lowest": plateau.lowest,
            "lowest_step": plateau.lowest_step,
            "steps_run": held_out.steps_run,
        }
    write_json(report, out.with_suffix(".json"))
    summary = result if args.proxy else {k: result[k] for k in ("bits_per_latent", "bpp_y", "bpp")}
    print(json.dumps(summary, indent=2))
    return 0


def _held_out_bits(model, held, patch: int, device, autoregressive: bool = False) -> dict[str, float]:
    """A point of the held-out learning curve: bits per latent element of the model, or for a
    proxy (``patch`` > 0) those of the patch's raster order and, if it was trained with it
    (``autoregressive``), of its autoregressive mask."""
    from . import orders
    from .costs import CostTable, ProxyOracle
    from .fit import measure

    if not patch:
        return {"bits_per_latent": measure(model, held)["bits_per_latent"]}
    table = CostTable.from_oracle(ProxyOracle(model, held, device=device))
    point = {"raster_order_bits_per_latent": table.bits_per_latent(orders.raster(patch))}
    rated = [point["raster_order_bits_per_latent"]]
    if autoregressive:
        table.fill_raster()
        point["autoregressive_bits_per_latent"] = float(table.raster_image_bits.sum()) / table.num_elements
        rated.append(point["autoregressive_bits_per_latent"])
    if patch == 2:  # every order: how their ranking moves with training (15 decoded sets, cheap)
        point["orders"] = {str(o): table.bits_per_latent(o) for o in orders.enumerate_orders(2)}
    point["bits_per_latent"] = sum(rated) / len(rated)  # what --converge watches
    return point  # fit_context switches the model back to training after measuring


def _is_context_file(path: str) -> bool:
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(d, dict) and d.get("format") == "orderopt-context"


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=number(at_least=0, at_most=1024),
        default=0,
        help="torch CPU threads (0: torch's default)",
    )


def add_converge_options(p: argparse.ArgumentParser, watched: str, every: str, advice: str) -> None:
    """--converge PATIENCE, --min-delta and --lr-drops: the reduce-on-plateau rule
    (:class:`orderopt.fit.Plateau`) on ``watched``, measured every ``every`` steps."""
    p.add_argument(
        "--converge",
        type=number(at_least=0),
        default=0,
        metavar="PATIENCE",
        help=f"train until the {watched} stops improving instead of a fixed schedule: after "
        f"PATIENCE points ({every}) without an improvement of more than --min-delta the "
        f"learning rate drops ÷10, after --lr-drops drops training stops and keeps the weights of the "
        f"lowest {watched}; --steps is then a cap (a run it or --time-limit stops keeps its last "
        f"weights). {advice} (0: the fixed schedule)",
    )
    p.add_argument(
        "--min-delta",
        type=number(float, at_least=0, below=1),
        default=1e-3,
        help=f"--converge: the relative {watched} improvement that counts",
    )
    p.add_argument(
        "--lr-drops",
        type=number(at_least=0),
        default=2,
        help="--converge: learning-rate drops (÷10 each) before a plateau stops training",
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    p = OneLineErrorParser(prog="python -m orderopt.train", description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("base", help="train the base hyperprior codec", formatter_class=fmt)
    b.add_argument(
        "--images", nargs="+", required=True, help="training image folder(s), searched recursively"
    )
    b.add_argument("--val-images", help="validation image folder (bpp and PSNR every --val-every steps)")
    b.add_argument(
        "--val-count", type=number(at_least=1), default=24, help="number of validation images used"
    )
    b.add_argument(
        "--lmbda",
        type=number(float, above=0),
        default=0.0067,
        help="rate-distortion trade-off λ (λ·255²·MSE + bpp)",
    )
    b.add_argument("--steps", type=number(at_least=1), default=100_000, help="total optimisation steps")
    b.add_argument("--out", required=True, help="checkpoint file; resumed from when it exists")
    b.add_argument(
        "--init",
        help="start from these weights (e.g. the shipped model) when --out does not exist; "
        "continues its step count with a fresh optimizer",
    )
    b.add_argument(
        "--N", type=number(at_least=1), default=96, help="channels of the transforms and of ẑ (shipped: 96)"
    )
    b.add_argument(
        "--M", type=number(at_least=1), default=128, help="channels of the latent ŷ (shipped: 128)"
    )
    b.add_argument("--batch", type=number(at_least=1), default=8, help="crops per step")
    b.add_argument(
        "--crop",
        type=number(at_least=64, multiple_of=64),
        default=128,
        help="crop size in pixels (a multiple of 64, the codec's total stride)",
    )
    b.add_argument(
        "--lr",
        type=number(float, above=0),
        default=1e-4,
        help="Adam learning rate (÷10 for the last 15%% of steps; with --converge, at each plateau)",
    )
    b.add_argument("--seed", type=int, default=0, help="random seed")
    b.add_argument("--val-every", type=number(at_least=1), default=1000, help="validation interval in steps")
    b.add_argument("--ckpt-every", type=number(at_least=1), default=200, help="checkpoint interval in steps")
    b.add_argument(
        "--time-limit",
        type=number(float, at_least=0),
        default=0,
        help="stop (checkpointed, resumable) after this many seconds; without --converge the learning "
        "rate drops ÷10 for the last 15%% of the steps or of this time, whichever comes first (0: no limit)",
    )
    add_converge_options(
        b,
        "validation loss",
        "--val-every, on --val-images",
        "The long runs across sessions use it: the learning rate drops when it pays, not at a fixed step",
    )
    add_threads_option(b)
    b.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="arithmetic of the transforms (bfloat16 autocast, channels-last; rates always in float32)",
    )
    add_device_option(b)
    b.set_defaults(func=train_base)
    e = sub.add_parser(
        "export", help="write fp16 shipped weights from a training checkpoint", formatter_class=fmt
    )
    e.add_argument("--ckpt", required=True, help="training checkpoint")
    e.add_argument("--out", required=True, help="output weights file")
    e.set_defaults(func=export)
    c = sub.add_parser("context", help="train a context model on cached latents", formatter_class=fmt)
    what = c.add_argument_group("which context model (exactly one)")
    what.add_argument("--order", help="multistage model of this order, e.g. '0,1;2,3'")
    what.add_argument("--kind", choices=["autoregressive", "checkerboard", "hyperprior"], help="a baseline")
    what.add_argument("--proxy", action="store_true", help="the any-order proxy of --patch")
    c.add_argument("--patch", type=number(at_least=1), default=2, help="patch size of the proxy")
    c.add_argument(
        "--mixture",
        type=number(at_least=1),
        default=1,
        metavar="K",
        help="Gaussians per latent: 1, a Gaussian; K > 1, a mixture of K Gaussians (Lin et al. 2023 use "
        "3), rated by its discretized likelihood and coded with --coder mixture (default: 1)",
    )
    c.add_argument(
        "--raster-fraction",
        type=number(float, at_least=0, at_most=1),
        default=0.25,
        help="proxies: share of each batch trained with the autoregressive context, so that the proxy "
        "also rates autoregressive (0: orders only)",
    )
    c.add_argument(
        "--train-images", nargs="+", help="training image folder(s) (latents extracted with --model, cached)"
    )
    c.add_argument("--train-latents", help="training latent file instead of --train-images")
    c.add_argument(
        "--eval-images", nargs="+", help="held-out image folder(s) (default: the embedded photographs)"
    )
    c.add_argument("--eval-latents", help="held-out latent file instead of --eval-images")
    add_model_options(c)
    c.add_argument("--cache-dir", help="latent cache folder (default: $ORDEROPT_CACHE or ~/.cache/orderopt)")
    c.add_argument("--steps", type=number(at_least=1), default=3000, help="optimisation steps")
    c.add_argument("--batch", type=number(at_least=1), default=16, help="latent crops per step")
    c.add_argument(
        "--crop", type=number(at_least=1), default=16, help="latent crop size (16 latents = 256 pixels)"
    )
    c.add_argument(
        "--lr",
        type=number(float, above=0),
        default=1e-3,
        help="Adam learning rate (÷10 for the last 20%% of steps; with --converge, at each plateau)",
    )
    c.add_argument("--seed", type=int, default=0, help="random seed")
    c.add_argument(
        "--init",
        help="start from the weights of this context model of the same kind, order and patch (e.g. "
        "the one of another quality; fine-tuning converges in fewer steps)",
    )
    c.add_argument(
        "--eval-every",
        type=number(at_least=0),
        default=0,
        help="measure the held-out rate every this many steps, saved as held_out_curve in the .json "
        "(0: only at the end)",
    )
    add_converge_options(
        c,
        "held-out rate",
        "--eval-every",
        "Hold out images the search will not rate (e.g. BSDS500 val), since the stopping point is "
        "chosen on them",
    )
    c.add_argument(
        "--time-limit",
        type=number(float, at_least=0),
        default=0,
        help="stop (checkpointed, resumable) after this many seconds (0: no limit)",
    )
    add_threads_option(c)
    add_device_option(c)
    c.add_argument(
        "--out", required=True, help="checkpoint (resumed from when it exists); results go to .json beside it"
    )
    c.set_defaults(func=train_context)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
