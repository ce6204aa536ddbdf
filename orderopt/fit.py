"""Training context models on cached latents, and measuring their held-out rate.

Every model of a comparison is trained by :func:`fit_context` with the same latents, crop
size, batch, steps and seed, so that the only difference is the context model itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import context as ctxm
from .errors import UserError
from .files import load_versioned, save_torch
from .latents import LatentSet
from .model import shipped_weights, state_hash

FORMAT = "orderopt-context"
VERSION = 1
CONTEXT_KEYS = ("kind", "latent_channels", "hyper_channels", "state_dict", "hash")


@dataclass(frozen=True)
class FitConfig:
    steps: int = 2000
    batch: int = 16
    crop: int = 16
    lr: float = 1e-3
    seed: int = 0
    # proxies: the share of each batch trained with the autoregressive (raster) context, so
    # that the same weights also score the autoregressive schedule (one basis for every row)
    raster_fraction: float = 0.0


@dataclass
class Plateau:
    """Training until the held-out rate stops improving (reduce-on-plateau, then stop).

    A held-out value counts as an improvement when it is below the best counted one by more than
    ``min_delta`` (relative). After ``patience`` evaluations without one the learning rate drops
    by ``factor``; after ``drops`` drops, ``patience`` more evaluations without one stop training
    (``converged``). ``lowest``/``lowest_step`` track the lowest value seen, whose weights
    :func:`fit_context` keeps and ends with. Pure state, saved in checkpoints to resume.
    """

    patience: int
    min_delta: float = 1e-3
    drops: int = 2
    factor: float = 0.1
    best: float = float("inf")
    waited: int = 0
    dropped: int = 0
    converged: bool = False
    lowest: float = float("inf")
    lowest_step: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1 or self.drops < 0 or not 0 < self.factor < 1 or not 0 <= self.min_delta < 1:
            raise ValueError("Plateau needs patience ≥ 1, drops ≥ 0, 0 < factor < 1 and 0 ≤ min_delta < 1")

    @property
    def lr_scale(self) -> float:
        return self.factor**self.dropped

    def rule(self) -> dict:
        """The settings (what a resumed run must share), without the state."""
        return {k: getattr(self, k) for k in ("patience", "min_delta", "drops", "factor")}

    def update(self, step: int, value: float) -> str:
        """Record a held-out value; returns "improved", "waiting", "drop" or "stop"."""
        if value < self.lowest:
            self.lowest, self.lowest_step = value, step
        if value < self.best * (1 - self.min_delta):
            self.best, self.waited = value, 0
            return "improved"
        self.waited += 1
        if self.waited < self.patience:
            return "waiting"
        self.waited = 0
        if self.dropped < self.drops:
            self.dropped += 1
            return "drop"
        self.converged = True
        return "stop"


@dataclass
class HeldOut:
    """A held-out learning curve measured during :func:`fit_context`: ``evaluate()`` every
    ``every`` steps (the model in eval mode) returns a point whose ``metric`` key drives the
    optional :class:`Plateau`. The curve and the plateau's state resume with the checkpoint."""

    evaluate: Callable[[], dict[str, float]]
    every: int
    metric: str = "bits_per_latent"
    plateau: Plateau | None = None
    identity: str = ""  # of the held-out set: a plateau run resumes only on the same one
    curve: list[dict] = field(default_factory=list)
    steps_run: int = 0  # set by fit_context: where training stopped
    train_since: float | None = None  # set by fit_context: training rate since the last point

    def rule(self) -> dict | None:
        """What a resumed plateau run must share: the plateau's settings, what it watches, how
        often and on which images (None without a plateau)."""
        if self.plateau is None:
            return None
        return {**self.plateau.rule(), "every": self.every, "metric": self.metric, "held_out": self.identity}


def build_context(
    kind: str,
    latent_channels: int,
    hyper_channels: int,
    order: str | None = None,
    patch: int | None = None,
    mixture: int = 1,
) -> ctxm.ContextModel:
    """A context model by kind (:func:`orderopt.context.build`): ``multistage`` (with ``order``),
    ``autoregressive`` or ``anyorder`` (with ``patch``), predicting mixtures of ``mixture``
    Gaussians (1: a Gaussian)."""
    return ctxm.build(kind, latent_channels, hyper_channels, order=order, patch=patch, mixture=mixture)


class LatentCrops:
    """Random (ŷ, h) crops of ``crop``×``crop`` latents; offsets are multiples of 4 so that
    every crop keeps the in-patch positions of patch sizes 1, 2 and 4.

    When no latent is that large, the crop shrinks to the largest that fits (a multiple of 4
    where possible); latents smaller than the crop are not used.
    """

    def __init__(self, latents: LatentSet, crop: int, seed: int):
        largest = max(min(e.y_hat.shape[1:]) for e in latents.entries)
        if crop > largest:
            crop = largest - largest % 4 if largest >= 4 else largest
        self.entries = [e for e in latents.entries if min(e.y_hat.shape[1:]) >= crop]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        ys, hs = [], []
        for _ in range(batch):
            e = self.entries[self.rng.integers(len(self.entries))]
            h, w = e.y_hat.shape[1:]
            i = 4 * self.rng.integers((h - self.crop) // 4 + 1)
            j = 4 * self.rng.integers((w - self.crop) // 4 + 1)
            ys.append(e.y_hat[:, i : i + self.crop, j : j + self.crop])
            hs.append(e.hyper[:, i : i + self.crop, j : j + self.crop])
        return torch.stack(ys), torch.stack(hs)


def save_context(
    model: ctxm.ContextModel, path: Path, meta: dict, train_state: dict | None = None, half: bool = False
) -> None:
    """Atomic, versioned context-model file; ``half`` stores fp16 weights (what the package ships).
    A model of mixtures records its K whatever ``meta`` says (a Gaussian's file records none, as
    files always did, and loads as K = 1)."""
    if model.mixture > 1:
        meta = {**meta, "mixture": model.mixture}
    sd = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    payload = {"format": FORMAT, "version": VERSION, **meta, "state_dict": sd, "hash": state_hash(sd)}
    if train_state is not None:
        payload["train_state"] = train_state
    save_torch(payload, path)


def load_context(path: str | Path) -> tuple[ctxm.ContextModel, dict]:
    """A saved context model and its metadata; clear errors for bad files."""
    d = load_versioned(
        path,
        FORMAT,
        VERSION,
        "context model",
        "train it with `python -m orderopt.train context`",
        required=CONTEXT_KEYS,
    )
    if state_hash(d["state_dict"]) != d.get("hash"):
        raise ValueError(f"context model {path} is corrupt: weights do not match the recorded hash")
    model = build_context(
        d["kind"],
        d["latent_channels"],
        d["hyper_channels"],
        d.get("order"),
        d.get("patch"),
        d.get("mixture", 1),
    )
    model.load_state_dict(d["state_dict"])
    return model.eval(), {k: v for k, v in d.items() if k not in ("state_dict", "train_state")}


def shipped_name(kind: str, patch: int | None = None, mixture: int = 1) -> str:
    """File stem of a shipped context model: ``proxy_k2``, ``autoregressive``, and with K > 1
    mixture components ``proxy_k2_mix3``."""
    stem = f"proxy_k{patch}" if kind == "anyorder" else kind
    return stem if mixture == 1 else f"{stem}_mix{mixture}"


def shipped_proxy(patch: int, quality: int | None, mixture: int = 1) -> Path:
    """The shipped any-order proxy's file, or a one-line error naming how to train one (callers
    check it before they compute anything)."""
    shipped = shipped_weights(shipped_name("anyorder", patch, mixture), quality)
    if not shipped.is_file():
        what = f"proxy for patch {patch}" + (f" with {mixture} mixture components" if mixture > 1 else "")
        option = f" --mixture {mixture}" if mixture > 1 else ""
        raise UserError(
            f"no shipped {what} (quality {quality or 'default'}); train one with `python -m "
            f"orderopt.train context --proxy --patch {patch}{option} "
            "--train-images DIR --out P.pt` and pass --proxy P.pt"
        )
    return shipped


def load_proxy(path: str | Path | None, patch: int, quality: int | None, lat: LatentSet, mixture: int = 1):
    """The any-order proxy of ``patch`` that rates ``lat``: the checkpoint ``path``, else the
    shipped one of ``quality`` with ``mixture`` components, which belongs to the shipped model only."""
    if path:
        proxy, meta = load_context(path)
    else:
        proxy, meta = load_context(shipped_proxy(patch, quality, mixture))
        if meta.get("model_hash") != lat.model_hash:
            raise UserError(
                f"the shipped proxy belongs to the shipped model, not to model {lat.model_hash}; train a "
                f"proxy for your model (`python -m orderopt.train context --proxy --patch {patch} ...`) "
                "and pass --proxy"
            )
    if meta.get("kind") != "anyorder" or int(meta.get("patch", -1)) != patch:
        raise UserError(f"{path} is a {meta.get('kind')} model, not an any-order proxy of patch {patch}")
    if (meta["latent_channels"], meta["hyper_channels"]) != (lat.latent_channels, lat.hyper_channels):
        raise UserError("the proxy was trained on latents of another codec (channel counts differ)")
    return proxy, meta


IDENTITY = ("kind", "order", "patch", "latent_channels", "hyper_channels", "model_hash", "mixture")


def with_mixture(meta: dict) -> dict:
    """A context model's metadata with its K (no K recorded: a Gaussian, K = 1)."""
    return {"mixture": 1, **meta}


def check_same_model(saved: dict, meta: dict, path: Path) -> None:
    """Refuse to resume (or overwrite) a checkpoint of another context model: another kind,
    order, patch, shape, K or base model than ``meta`` describes (no K recorded: K = 1)."""
    saved, meta = with_mixture(saved), with_mixture(meta)
    differ = [k for k in IDENTITY if k in meta and saved.get(k) != meta[k]]
    if differ:
        was = ", ".join(f"{k} {saved.get(k)!r}" for k in differ)
        now = ", ".join(f"{k} {meta[k]!r}" for k in differ)
        raise UserError(f"{path} holds another context model ({was}, not {now}); choose another --out")


def _same_run(train_state: dict, config: dict, rule: dict | None) -> bool:
    """Whether a checkpoint's training state continues this run. Under a plateau rule the step
    count is only a cap, so a run resumes with a higher one."""
    saved = dict(train_state.get("config") or {})
    if train_state.get("plateau_rule") != rule:
        return False
    if rule is not None:
        saved["steps"] = config["steps"]
    return saved == config


def fit_context(
    model: ctxm.ContextModel,
    train: LatentSet,
    config: FitConfig,
    checkpoint: Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    desc: str = "fit",
    on_step: Callable[[int], None] | None = None,
    device: str | torch.device = "cpu",
    time_limit: float = 0.0,
    held_out: HeldOut | None = None,
) -> ctxm.ContextModel:
    """Train ``model`` on random latent crops (Adam, lr ÷10 for the last 20% of steps), on
    ``device`` (the model is moved there; crops are drawn on the CPU and moved per step).

    A ``time_limit`` in seconds (0: none) stops training early, checkpointed; the learning
    rate then drops for the last 20% of that time if that comes before 80% of the steps.

    With ``checkpoint`` the state is saved every 100 steps and training resumes from it.
    ``on_step(step)`` is called after every optimizer step (1-based), e.g. to measure a
    learning curve; it may switch the model to eval mode, training switches it back.

    ``held_out`` measures a learning curve that resumes with the checkpoint; with its
    ``plateau`` the learning rate follows the plateau instead of the fixed drop, training stops
    once the held-out rate stops improving (``config.steps`` is then a cap), and the model ends
    with the weights of its lowest held-out value, the starting weights (measured at step 0)
    included.
    """
    torch.manual_seed(config.seed)
    crops = LatentCrops(train, config.crop, config.seed)
    rng = np.random.default_rng(config.seed + 1)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    step = 0
    plateau = held_out.plateau if held_out is not None else None
    rule = held_out.rule() if held_out is not None else None
    lowest_state: dict | None = None  # weights at the plateau's lowest held-out value
    # the training crops' mean rate since the last curve point: beside the held-out rate it tells
    # overfitting (train falls, held-out rises) from a too-high learning rate (both rise)
    train_sum, train_n = 0.0, 0
    if checkpoint is not None and checkpoint.is_file():
        # weights only (never unpickles code), with every key a context model needs
        d = load_versioned(checkpoint, FORMAT, VERSION, "context checkpoint", required=("state_dict",))
        check_same_model(d, {**(meta or {}), "mixture": model.mixture}, checkpoint)
        ts = d.get("train_state")
        same = bool(ts) and _same_run(ts, asdict(config), rule)
        if ts and (ts.get("plateau_rule") or rule) and not same:
            # a plateau run's history decides its future: never silently restart one
            raise UserError(
                f"{checkpoint} holds a run with other training settings or held-out rule; resume it "
                "with the same ones, or choose another --out"
            )
        if same:
            model.load_state_dict(d["state_dict"])
            opt.load_state_dict(ts["optimizer"])
            crops.rng.bit_generator.state = ts["crop_rng"]
            rng.bit_generator.state = ts["rng"]
            torch.set_rng_state(ts["torch_rng"])
            step = ts["step"]
            train_sum, train_n = ts.get("train_sum", 0.0), ts.get("train_n", 0)
            if held_out is not None:
                held_out.curve[:] = ts.get("curve", [])
            if plateau is not None:
                for k, v in ts["plateau"].items():
                    setattr(plateau, k, v)
                lowest_state = ts.get("lowest_state")

    def save():
        if checkpoint is not None:
            state = {
                "config": asdict(config),
                "step": step,
                "optimizer": opt.state_dict(),
                "crop_rng": crops.rng.bit_generator.state,
                "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "train_sum": train_sum,
                "train_n": train_n,
            }
            if held_out is not None:
                state["curve"] = held_out.curve
            if plateau is not None:
                state.update(plateau_rule=rule, plateau=asdict(plateau), lowest_state=lowest_state)
            save_context(model, checkpoint, {**(meta or {}), "steps_done": step}, state)

    def measure_held_out() -> bool:
        """Adds a curve point; True when the plateau says stop."""
        nonlocal lowest_state, train_sum, train_n
        point = {"step": step, **held_out.evaluate()}
        if train_n:
            point["train_bits_per_latent"] = train_sum / train_n
        train_sum, train_n = 0.0, 0
        held_out.curve.append(point)
        model.train()
        if plateau is None:
            return False
        event = plateau.update(step, float(point[held_out.metric]))
        point.update(event=event, lr=config.lr * plateau.lr_scale)
        if plateau.lowest_step == step:
            lowest_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return event == "stop"

    model.train()
    if plateau is not None and step == 0 and not held_out.curve:
        measure_held_out()  # the starting weights are the first to beat (fine-tuning may not)
    bar = tqdm(total=config.steps, initial=step, desc=desc, unit="step", disable=not progress, leave=False)
    t0, limit = time.time(), time_limit or float("inf")
    while step < config.steps and time.time() - t0 < limit and not (plateau and plateau.converged):
        if plateau is not None:
            lr = config.lr * plateau.lr_scale
        else:
            late = step >= 0.8 * config.steps or time.time() - t0 >= 0.8 * limit
            lr = config.lr * 0.1 if late else config.lr
        for g in opt.param_groups:
            g["lr"] = lr
        y, h = (t.to(device, non_blocking=True) for t in crops.sample(config.batch))
        loss = model.loss_bits(y, h, rng, config.raster_fraction)
        if not torch.isfinite(loss):  # a saved model must be a usable one
            raise UserError(
                f"the loss became non-finite at step {step + 1}"
                + (f"; the last checkpoint in {checkpoint} is kept" if checkpoint is not None else "")
                + ": lower the learning rate"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        train_sum, train_n = train_sum + float(loss.detach()), train_n + 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(bits=f"{float(loss.detach()):.4f}")
        stop = held_out is not None and step % held_out.every == 0 and measure_held_out()
        if step % 100 == 0 or stop:
            save()
        if on_step is not None:
            on_step(step)
            model.train()
    bar.close()
    if plateau is not None and plateau.converged and lowest_state is not None:
        model.load_state_dict(lowest_state)  # early stopping: the held-out best, not the last
    save()
    if held_out is not None:
        held_out.steps_run = step
        held_out.train_since = train_sum / train_n if train_n else None
    return model.eval()


@torch.no_grad()
def measure(model: ctxm.ContextModel, latents: LatentSet) -> dict:
    """Held-out rate of a (non-proxy) context model on whole latents.

    Returns total bits of ŷ, bits per latent element, bpp of ŷ and total bpp with ẑ, and the
    per-image bpp (for spreads). Runs on the model's device.
    """
    model.eval()
    device = next(model.parameters()).device
    bits, elements, pixels, z_bits, per_image = 0.0, 0, 0, 0.0, []
    for e in latents.entries:
        b = float(model.bits(e.y_hat[None].to(device), e.hyper[None].to(device)).sum())
        bits += b
        elements += e.y_hat.numel()
        pixels += e.num_pixels
        z_bits += e.z_bits
        per_image.append({"name": e.name, "bpp_y": b / e.num_pixels, "bpp": (b + e.z_bits) / e.num_pixels})
    return {
        "bits": bits,
        "bits_per_latent": bits / elements,
        "bpp_y": bits / pixels,
        "bpp": (bits + z_bits) / pixels,
        "images": per_image,
    }
