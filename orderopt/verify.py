"""Dedicated models: the ground truth the proxy's ranking is checked against.

A dedicated model is the multistage context model of one order (or a baseline) trained on
training latents and measured on the held-out ones. ``search --verify N`` trains one for the N
best candidates, every published order, the worst candidate and every baseline, all under one
protocol (by default each stops at its lowest rate on a tenth of the training images held out
from it, within a cap of steps; ``--verify-early-stop 0``: one fixed budget), ``--jobs`` at a
time, each saved as it finishes so that a re-run resumes and runs that share a training set and
budget share their models (:func:`verify`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import data
from . import orders as od
from .context import AnyOrderContext, dedicated, init_from_proxy
from .costs import CostTable
from .errors import UserError, number
from .files import write_json
from .fit import FitConfig, HeldOut, Plateau, fit_context, load_context, measure
from .latents import LatentSet, cached_latents, load_latents
from .model import load_model, shipped_weights


def dedicated_rate(
    spec: od.DecodingOrder | str,
    train: LatentSet,
    held_out: LatentSet,
    config,
    checkpoint: Path | None = None,
    progress: bool = True,
    init: AnyOrderContext | None = None,
    device: str | torch.device = "cpu",
    curve_every: int = 0,
    early_stop: int = 0,
) -> dict:
    """Train the dedicated context model of ``spec`` (an order, or ``"autoregressive"``) on
    ``train`` with ``config`` (a :class:`~orderopt.fit.FitConfig`) and measure ``held_out``.

    Returns :func:`orderopt.fit.measure`'s dict. With ``checkpoint`` the training resumes and
    the trained model is kept there. With ``init`` (a proxy) training starts from the proxy's
    weights (:func:`orderopt.context.init_from_proxy`) instead of a random initialisation, and
    the result also has ``start_bits_per_latent``, the held-out rate before training. With
    ``curve_every`` > 0 the held-out rate is also measured every that many steps, as
    ``held_out_curve`` (``[{"step", "bits_per_latent", "train_bits_per_latent"}]``, ending with the
    trained model's rate at its last step; ``train_bits_per_latent``: the training crops' mean rate
    since the previous point), so one training shows whether the model's rate, and the ranking of
    several, still moves with more steps, and whether it overfits.

    With ``early_stop`` > 0 the model trains on all but a tenth of ``train``'s images
    (:func:`stop_split`), its rate on that tenth is measured every ``early_stop`` steps, training
    stops after :data:`STOP_PATIENCE` measurements without a new lowest (``config.steps`` is
    then a cap) and the model keeps its weights of the lowest, the starting ones included; the
    result also has ``stop_curve`` and ``stopped_at``. ``held_out`` is never looked at before the
    end, so the stopping point is not chosen on the images the rate is reported on.
    """
    m, c = train.latent_channels, train.hyper_channels
    torch.manual_seed(config.seed)  # the initial weights too: same seed, same bits
    model = dedicated(spec, m, c, init.mixture if init is not None else 1)  # a proxy's K carries over
    meta = model.spec()
    meta.update(latent_channels=m, hyper_channels=c, model_hash=train.model_hash)
    if init is not None:
        init_from_proxy(model, init)  # on the CPU, where the proxy was loaded
    start = measure(model.to(device), held_out)["bits_per_latent"] if init is not None else None
    if curve_every > 0 and early_stop > 0:
        raise ValueError("a dedicated model has one held-out curve: curve_every or early_stop, not both")
    curve = None
    if curve_every > 0:
        curve = HeldOut(lambda: {"bits_per_latent": measure(model, held_out)["bits_per_latent"]}, curve_every)
    fit_set = train
    if early_stop > 0:
        fit_set, stop_set = stop_split(train)
        curve = HeldOut(
            lambda: {"bits_per_latent": measure(model, stop_set)["bits_per_latent"]},
            early_stop,
            plateau=Plateau(patience=STOP_PATIENCE, min_delta=0.0, drops=0),
            identity=f"{train.images_hash}/stop{len(stop_set)}",
        )
    fit_context(
        model,
        fit_set,
        config,
        checkpoint=checkpoint,
        meta=meta,
        progress=progress,
        desc=str(spec),
        device=device,
        held_out=curve,
    )
    out = measure(model, held_out)
    if early_stop > 0:
        return {
            **out,
            "start_bits_per_latent": start,
            "stop_curve": curve.curve,
            "stopped_at": curve.plateau.lowest_step,
            "steps_run": curve.steps_run,
        }
    if curve is not None:
        if not curve.curve or curve.curve[-1]["step"] != curve.steps_run:  # N does not divide the steps
            point = {"step": curve.steps_run, "bits_per_latent": out["bits_per_latent"]}
            if curve.train_since is not None:
                point["train_bits_per_latent"] = curve.train_since
            curve.curve.append(point)
        out["held_out_curve"] = curve.curve
    return out if start is None else {**out, "start_bits_per_latent": start}


STOP_FRACTION = 0.1  # of the training images, held out from training to stop on
STOP_PATIENCE = 2  # measurements without a new lowest before an early-stopped model stops
# the default interval: the one of the committed early-stopped tables (dedicated_bd_runs.sh),
# where every fixed budget had trained its models past their lowest held-out rate
DEFAULT_STOP_EVERY = 125


def default_early_stop(dedicated: bool, curve_every: int, steps: int) -> int:
    """``--verify-early-stop`` when not given: early stopping whenever dedicated models train
    (``dedicated``), every :data:`DEFAULT_STOP_EVERY` steps or at the end of a shorter budget;
    0 (a fixed budget) with a ``--verify-curve``, which measures the whole budget instead."""
    if not dedicated or curve_every > 0:
        return 0
    return min(DEFAULT_STOP_EVERY, steps)


def stop_split(train: LatentSet, fraction: float = STOP_FRACTION) -> tuple[LatentSet, LatentSet]:
    """(fit, stop): ``train`` without and with its stopping images, a fixed draw of
    ceil(``fraction`` × images) by name (the same for every model and run of a training set)."""
    if len(train) < 2:
        raise UserError(
            f"--verify-early-stop holds out a tenth of the training images; {len(train)} is too few: "
            "give more training images, or --verify-early-stop 0 to train on all of them for exactly "
            "--verify-steps steps"
        )
    names = sorted(train.names)
    n_stop = max(1, int(np.ceil(fraction * len(names))))
    picked = np.random.default_rng(0).permutation(len(names))[:n_stop]
    stop = {names[i] for i in picked}
    return train.subset([n for n in names if n not in stop]), train.subset(sorted(stop))


def add_options(p: argparse.ArgumentParser) -> None:
    """The options of ``search --verify`` and of Optuna's dedicated objective."""
    p.add_argument(
        "--verify",
        type=number(at_least=0),
        default=0,
        help="train dedicated models for the N best candidates, the published orders, the worst "
        "candidate and every baseline, and rank-correlate their rates with the proxy (default: 0, none)",
    )
    p.add_argument(
        "--train-images", help="training image folder for --verify / dedicated objective (default: none)"
    )
    p.add_argument("--train-latents", help="training latent file instead of --train-images (default: none)")
    p.add_argument(
        "--verify-steps",
        type=number(at_least=1),
        default=2000,
        help="training steps of each dedicated model: a cap when it stops early (the default), the "
        "budget with --verify-early-stop 0 (default: 2000)",
    )
    p.add_argument(
        "--verify-init",
        choices=["proxy", "scratch"],
        default="proxy",
        help="start dedicated models from the proxy's weights restricted to their masks (a short "
        "budget measures what specialising to the order gains), or from random weights (needs "
        "budgets far beyond a CPU's to converge; results/ shows both; default: proxy)",
    )
    p.add_argument(
        "--verify-lr",
        type=number(float, above=0),
        help="learning rate of dedicated models (default: 1e-3 from scratch, 1e-4 from the proxy)",
    )
    p.add_argument(
        "--verify-curve",
        type=number(at_least=0),
        default=0,
        help="measure each dedicated model's held-out rate every N steps as well (0: only at the "
        "end); experiments/dedicated_stability.py then shows whether the dedicated ranking still "
        "changes with more steps (default: 0)",
    )
    p.add_argument(
        "--verify-early-stop",
        type=number(at_least=0),
        default=None,
        help="stop each dedicated model once its rate on a tenth of the training images, held out "
        f"from its training, has not reached a new lowest in {STOP_PATIENCE} measurements this many "
        "steps apart, and keep its lowest weights (--verify-steps is then a cap); 0: train every "
        f"model exactly --verify-steps steps (default: {DEFAULT_STOP_EVERY}, or --verify-steps if "
        "smaller; 0 with --verify-curve)",
    )
    p.add_argument(
        "--jobs",
        type=number(at_least=1),
        default=1,
        help="dedicated models trained at once, one process and CPU thread each",
    )
    p.add_argument(
        "--dedicated-dir",
        help="folder of dedicated models and results, shareable between runs (default: RUN_DIR/dedicated)",
    )


def training_latents(args) -> tuple[LatentSet, Path]:
    """The training latents of dedicated models, and the file they are in."""
    if args.train_latents:
        return load_latents(args.train_latents), Path(args.train_latents)
    if not args.train_images:
        raise UserError(
            "--verify and --objective dedicated need --train-images DIR (or --train-latents FILE)"
        )
    model, meta = load_model(args.model, args.quality)
    return cached_latents(model, meta["hash"], data.load_images(args.train_images), args.cache_dir)


def verify_config(args) -> FitConfig:
    """The one training budget of every dedicated model of a run. Fine-tuning from the proxy
    uses a 10× smaller learning rate by default: at the from-scratch rate, Adam's first steps
    throw away much of what the proxy learnt."""
    lr = args.verify_lr or (1e-4 if args.verify_init == "proxy" else 1e-3)
    return FitConfig(steps=args.verify_steps, seed=args.seed, lr=lr)


def verify_proxy_path(args) -> str | None:
    """The proxy dedicated models start from (``--verify-init proxy``), else None."""
    if args.verify_init != "proxy":
        return None
    return str(args.proxy or shipped_weights(f"proxy_k{args.patch}", args.quality))


def dedicated_objective(args, lat: LatentSet):
    """Held-out bits of a dedicated model trained for the order (--verify-steps steps each)."""
    train = training_latents(args)[0]
    cfg = verify_config(args)
    path = verify_proxy_path(args)
    init = load_context(path)[0] if path else None
    stop = getattr(args, "verify_early_stop", 0) or 0
    return lambda order: dedicated_rate(order, train, lat, cfg, progress=False, init=init, early_stop=stop)[
        "bits"
    ]


def shipped_autoregressive(model_hash: str, quality: int | None) -> tuple | None:
    """The shipped autoregressive model (model, meta) of ``quality`` when it belongs to the base
    model ``model_hash``, else None; :func:`measure` gives its held-out rate."""
    path = shipped_weights("autoregressive", quality)
    if not path.is_file():
        return None
    model, meta = load_context(path)
    return (model, meta) if meta.get("model_hash") == model_hash else None


def verify_specs(k: int, found: dict, table: CostTable, n_best: int) -> dict[str, od.DecodingOrder | str]:
    """What ``--verify N`` trains: the N best candidates by proxy rate, every published order,
    the worst candidate (so that the verified rates span the range the proxy predicts) and the
    baselines hyperprior-only, checkerboard and autoregressive."""
    ranked = sorted(found, key=table.rate)
    specs: dict[str, od.DecodingOrder | str] = {str(o): o for o in ranked[:n_best]}
    specs.update({str(o): o for o in od.published_orders(k).values()})
    if ranked:
        specs.setdefault(str(ranked[-1]), ranked[-1])
    specs.update(
        {
            "hyperprior": od.hyperprior_only(),
            "checkerboard": od.checkerboard(),
            "autoregressive": "autoregressive",
        }
    )
    return specs


def dedicated_identity(
    spec_name: str,
    cfg: FitConfig,
    train: LatentSet,
    held_out: LatentSet,
    init: str = "scratch",
    curve_every: int = 0,
    early_stop: int = 0,
) -> dict:
    """What a dedicated result depends on; a stored result is reused only when all of it matches.
    ``init`` is ``scratch`` or ``proxy:<proxy hash>``; ``curve_every`` and ``early_stop`` only
    when > 0, so that results stored before those options keep their identity."""
    curve = {"curve_every": curve_every} if curve_every > 0 else {}
    if early_stop > 0:
        curve["early_stop"] = {"every": early_stop, "fraction": STOP_FRACTION, "patience": STOP_PATIENCE}
    return {
        "spec": spec_name,
        "init": init,
        "config": asdict(cfg),
        "model_hash": train.model_hash,
        "train_images_hash": train.images_hash,
        "held_out_images_hash": held_out.images_hash,
        **curve,
    }


def _file_stem(name: str, init: str = "scratch", early_stop: int = 0) -> str:
    """File name of a dedicated model: the order (or baseline), tagged with the proxy it starts
    from and its early stopping, so that runs with different proxies or stopping share one folder."""
    stem = name.replace(",", "-").replace(";", "_")
    stem = stem if init == "scratch" else f"{stem}.{init.replace(':', '-')}"
    return f"{stem}.stop{early_stop}" if early_stop > 0 else stem


def dedicated_spec(name: str) -> od.DecodingOrder | str:
    """What :func:`orderopt.context.dedicated` builds for a verified row's name: an order, a
    baseline's schedule, or ``"autoregressive"``."""
    named = {"hyperprior": od.hyperprior_only(), "checkerboard": od.checkerboard()}
    return name if name == "autoregressive" else named.get(name) or od.DecodingOrder.parse(name)


def init_label(proxy: tuple | None) -> str:
    return f"proxy:{proxy[1]['hash']}" if proxy else "scratch"


_WORKER: dict = {}


def _worker_init(train_path: str, held_out_path: str, proxy_path: str | None, device: str) -> None:
    torch.set_num_threads(1)  # one core per worker: J workers use J cores without oversubscription
    _WORKER["device"] = torch.device(device)
    _WORKER["train"] = load_latents(train_path)
    _WORKER["held_out"] = load_latents(held_out_path)
    _WORKER["proxy"] = load_context(proxy_path) if proxy_path else None


def _worker_train(
    name: str, cfg: FitConfig, folder: str, curve_every: int, early_stop: int
) -> tuple[str, dict]:
    w = _WORKER
    return name, _train_dedicated(
        name,
        w["train"],
        w["held_out"],
        cfg,
        Path(folder),
        False,
        w["proxy"],
        w["device"],
        curve_every,
        early_stop,
    )


def _train_dedicated(
    name: str,
    train: LatentSet,
    held_out: LatentSet,
    cfg: FitConfig,
    folder: Path,
    progress: bool,
    proxy: tuple | None = None,
    device: str | torch.device = "cpu",
    curve_every: int = 0,
    early_stop: int = 0,
) -> dict:
    spec = dedicated_spec(name)
    stem = _file_stem(name, init_label(proxy), early_stop)
    t0 = time.time()
    init = proxy[0] if proxy else None
    identity = dedicated_identity(name, cfg, train, held_out, init_label(proxy), curve_every, early_stop)
    ckpt = folder / f"{stem}.pt"
    stamp = folder / f"{stem}.identity.json"  # what the checkpoint was started for
    if ckpt.is_file() and (not stamp.is_file() or json.loads(stamp.read_text()) != identity):
        # another training set, proxy or budget: never resume from it (a run with another
        # --verify-curve also starts over: its checkpoint lacks or has the curve to resume)
        ckpt.unlink()
    write_json(identity, stamp)
    res = dedicated_rate(
        spec,
        train,
        held_out,
        cfg,
        ckpt,
        progress,
        init=init,
        device=device,
        curve_every=curve_every,
        early_stop=early_stop,
    )
    record = {**identity, **res, "train_s": round(time.time() - t0, 1), "device": str(device)}
    write_json(record, folder / f"{stem}.json")
    return record


def verify(
    args,
    found: dict,
    table: CostTable,
    lat: LatentSet,
    held_out_path: str,
    out: Path,
    device: str | torch.device = "cpu",
) -> dict[str, dict]:
    """Dedicated models for :func:`verify_specs`, all under one budget (``--verify-steps``,
    ``--seed``), ``--jobs`` at a time. Each model and result is saved as it finishes, in
    ``--dedicated-dir`` (default RUN_DIR/dedicated), so a re-run resumes and runs with the same
    training set and budget (patch 2 and patch 4, say) share their baselines."""
    train, train_path = training_latents(args)
    cfg = verify_config(args)
    folder = Path(args.dedicated_dir or out / "dedicated")
    folder.mkdir(parents=True, exist_ok=True)
    proxy_path = verify_proxy_path(args)
    proxy = load_context(proxy_path) if proxy_path else None
    every, stop = args.verify_curve, args.verify_early_stop
    results, todo = {}, []
    for name in verify_specs(args.patch, found, table, args.verify):
        path = folder / f"{_file_stem(name, init_label(proxy), stop)}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            rec.setdefault("init", "scratch")  # records written before --verify-init
            want = dedicated_identity(name, cfg, train, lat, init_label(proxy), every, stop)
            # a stored curve does not change the model, so a run without one reuses it; early
            # stopping does, so it must match either way
            if all(rec.get(k) == v for k, v in want.items()) and rec.get("early_stop") == want.get(
                "early_stop"
            ):
                results[name] = rec
                continue
        todo.append(name)
    if todo:
        print(
            f"training {len(todo)} dedicated models ({'at most ' if stop else ''}{cfg.steps} steps each, "
            f"{args.jobs} at a time) in {folder}"
        )
    if args.jobs > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.jobs,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(str(train_path), held_out_path, proxy_path, str(device)),
        ) as pool:
            futures = [pool.submit(_worker_train, name, cfg, str(folder), every, stop) for name in todo]
            for fut in tqdm(as_completed(futures), total=len(futures), desc="dedicated", unit="model"):
                name, rec = fut.result()
                results[name] = rec
    else:
        for name in todo:
            results[name] = _train_dedicated(name, train, lat, cfg, folder, True, proxy, device, every, stop)
    return results
