"""The candidates table of a search run: its schema, one rate basis, gains and their intervals.

Every row (each candidate order and the baselines hyperprior-only, checkerboard and
autoregressive) is ranked on one basis, the same for all rows (column ``basis``):

- ``proxy``: the proxy's rates, the default. A proxy trained with the raster context
  (``raster_fraction`` > 0) rates autoregressive on the same weights as the orders.
- ``dedicated``: dedicated models' rates, used only when every row has one.

Gains against a baseline are ``100 · (R − R_base) / R_base`` on ŷ's bits (negative is better).
Their 95% intervals come from a paired bootstrap over images: each resample draws images with
replacement, the same draw for every row, and recomputes every gain from the resampled sums.
``distinguishable_from_best`` says whether the paired interval of (R − R_best) excludes 0,
R_best the rate of the best candidate order (not a baseline).

It also reads and writes a search run's files: the candidate rows of a cost table
(:func:`candidate_rows`), ``candidates.csv`` and ``frontier.csv`` (:func:`write_csv`,
:func:`frontier_table`), the console table (:func:`print_table`), and :class:`Run`, the
reader of a finished run that the report draws from.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from . import orders as od
from .costs import CostTable
from .data import EMBEDDED_NAME
from .errors import UserError
from .files import atomic_write
from .latents import LatentSet

COLUMNS = [
    "rank",
    "order",
    "stages",
    "symmetry_class",
    "source",
    "basis",
    "proxy_bits_per_latent",
    "dedicated_bits_per_latent",
    "bpp",
    "gain_vs_checkerboard_pct",
    "gain_vs_checkerboard_ci_low",
    "gain_vs_checkerboard_ci_high",
    "gain_vs_autoregressive_pct",
    "gain_vs_autoregressive_ci_low",
    "gain_vs_autoregressive_ci_high",
    "distinguishable_from_best",
]
BASELINES = ("hyperprior", "checkerboard", "autoregressive")
# frontier.csv: the best schedule within every stage budget, on the proxy's rates
FRONTIER_COLUMNS = [
    "stages",
    "order",
    "proxy_bits_per_latent",
    "bpp",
    "gain_vs_checkerboard_pct",
    "gain_vs_autoregressive_pct",
]
LEVEL = 0.95


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: ``resamples`` draws of the images, seeded."""

    resamples: int = 2000
    seed: int = 0
    level: float = LEVEL

    def as_dict(self) -> dict:
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level, "unit": "image"}


def resampled_totals(per_image: np.ndarray, boot: Bootstrap) -> np.ndarray:
    """(resamples, rows): each row's total bits over a resample of the images (columns of
    ``per_image``, shape (rows, images)), the same resample for every row."""
    rng = np.random.default_rng(boot.seed)
    n = per_image.shape[1]
    draws = rng.integers(0, n, size=(boot.resamples, n))
    counts = np.zeros((boot.resamples, n))
    np.add.at(counts, (np.arange(boot.resamples)[:, None], draws), 1.0)
    return counts @ per_image.T


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of ``samples`` (resamples, …) at ``level``, along axis 0."""
    tail = 100 * (1 - level) / 2
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def gain_pct(rate: np.ndarray, base: np.ndarray) -> np.ndarray:
    return 100 * (rate - base) / base


@dataclass(frozen=True)
class LatentTotals:
    """What turns bits per latent into bpp: ŷ's elements, the pixels, and ẑ's bits."""

    elements: int
    pixels: int
    z_bits: float

    def bpp(self, bits_per_latent: np.ndarray) -> np.ndarray:
        return (np.asarray(bits_per_latent, float) * self.elements + self.z_bits) / self.pixels


def build_rows(
    rows: list[dict], per_image: dict[str, np.ndarray], basis: str, totals: LatentTotals, boot: Bootstrap
) -> pd.DataFrame:
    """The ranked candidates table.

    ``rows``: one dict per row with ``order``, ``stages``, ``symmetry_class``, ``source``,
    ``proxy_bits_per_latent`` and ``dedicated_bits_per_latent``. ``per_image``: each row's ŷ
    bits per image on ``basis``, by order name (rows without it get no interval). Ranks, bpp
    and gains use ``basis`` only.
    """
    df = pd.DataFrame(rows)
    bits = df[f"{basis}_bits_per_latent"].to_numpy(float)
    df["basis"] = basis
    df["bpp"] = totals.bpp(bits)
    names = df["order"].tolist()
    for b in ("checkerboard", "autoregressive"):
        ref = bits[names.index(b)] if b in names else np.nan
        df[f"gain_vs_{b}_pct"] = gain_pct(bits, ref)
    # best: the candidate order with the lowest rate (baselines only where there is none)
    pool = np.where(df["source"].to_numpy() != "baseline", bits, np.nan)
    pool = pool if np.isfinite(pool).any() else bits
    best = int(np.nanargmin(pool)) if np.isfinite(pool).any() else None
    have = [i for i, n in enumerate(names) if n in per_image and np.isfinite(bits[i])]
    if have and len(per_image[names[have[0]]]) < 2:
        have = []  # one image: resampling it says nothing about other images (no interval)
    ci = {
        f"gain_vs_{b}_ci_{e}": np.full(len(df), np.nan)
        for b in ("checkerboard", "autoregressive")
        for e in ("low", "high")
    }
    distinct = np.full(len(df), False)
    if have:
        totals = resampled_totals(np.array([per_image[names[i]] for i in have]), boot)
        col = {i: j for j, i in enumerate(have)}
        for b in ("checkerboard", "autoregressive"):
            if b in names and names.index(b) in col:
                ref = totals[:, [col[names.index(b)]]]
                low, high = interval(gain_pct(totals, ref), boot.level)
                ci[f"gain_vs_{b}_ci_low"][have], ci[f"gain_vs_{b}_ci_high"][have] = low, high
        if best in col:
            low, high = interval(totals - totals[:, [col[best]]], boot.level)
            distinct[have] = (low > 0) | (high < 0)
    for name, values in ci.items():
        df[name] = values
    df["distinguishable_from_best"] = distinct
    order = np.argsort(np.where(np.isfinite(bits), bits, np.inf), kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df[COLUMNS]


def dedicated_image_bits(record: dict, pixels: dict[str, int]) -> np.ndarray:
    """A dedicated model's ŷ bits per image, from :func:`orderopt.fit.measure`'s per-image bpp
    and each image's pixel count (by name)."""
    return np.array([im["bpp_y"] * pixels[im["name"]] for im in record["images"]])


def choose_basis(rows: list[dict]) -> str:
    """``dedicated`` when every row has a dedicated rate, else ``proxy``."""
    ded = [r.get("dedicated_bits_per_latent", np.nan) for r in rows]
    return "dedicated" if rows and all(np.isfinite(ded)) else "proxy"


def class_comparison(
    per_image: dict[str, np.ndarray], classes: dict[str, str], boot: Bootstrap
) -> pd.DataFrame:
    """Symmetry classes against the best class: each class's rate is the mean over its member
    orders, per image; gains and paired intervals as for single orders. Columns ``class``,
    ``orders``, ``gain_vs_best_class_pct``, ``ci_low``, ``ci_high``, ``distinguishable``, best
    class first. Classes average out much of the per-order noise, so conclusions about them can
    hold where single orders cannot be told apart."""
    members: dict[str, list[str]] = {}
    for order, cls in classes.items():
        if order in per_image:
            members.setdefault(cls, []).append(order)
    names = sorted(members)
    if not names or len(next(iter(per_image.values()))) < 2:  # one image: no interval to draw
        return pd.DataFrame(
            columns=["class", "orders", "gain_vs_best_class_pct", "ci_low", "ci_high", "distinguishable"]
        )
    rates = np.array([np.mean([per_image[o] for o in members[c]], axis=0) for c in names])
    best = int(np.argmin(rates.sum(1)))
    totals = resampled_totals(rates, boot)
    low, high = interval(gain_pct(totals, totals[:, [best]]), boot.level)
    df = pd.DataFrame(
        {
            "class": names,
            "orders": [len(members[c]) for c in names],
            "gain_vs_best_class_pct": gain_pct(rates.sum(1), rates[best].sum()),
            "ci_low": low,
            "ci_high": high,
            "distinguishable": (low > 0) | (high < 0),
        }
    )
    return df.sort_values("gain_vs_best_class_pct", kind="stable").reset_index(drop=True)


def frontier_rows(
    schedules: list[tuple[int, object, float]],
    num_elements: int,
    num_pixels: int,
    z_bits: float,
    checkerboard_bits: float | None,
    autoregressive_bits: float | None,
) -> pd.DataFrame:
    """frontier.csv: one row per stage budget T (``stages``), the best schedule with at most T
    stages, its rate and its gains (ŷ bits, percent, negative is better) against the
    baselines rated by the same proxy (NaN where the run has no such baseline)."""

    def gain(bits: float, base: float | None) -> float:
        return float("nan") if base is None else float(gain_pct(np.float64(bits), np.float64(base)))

    rows = [
        {
            "stages": t,
            "order": str(order),
            "proxy_bits_per_latent": bits / num_elements,
            "bpp": (bits + z_bits) / num_pixels,
            "gain_vs_checkerboard_pct": gain(bits, checkerboard_bits),
            "gain_vs_autoregressive_pct": gain(bits, autoregressive_bits),
        }
        for t, order, bits in schedules
    ]
    return pd.DataFrame(rows, columns=FRONTIER_COLUMNS)


def rank_correlations(df: pd.DataFrame) -> dict:
    """Spearman and Kendall of proxy against dedicated rates over the rows that have both, and
    (``orders_only``) over the multistage orders alone, without the far-apart baselines."""
    from scipy import stats

    def corr(d: pd.DataFrame) -> dict:
        if len(d) < 3:
            return {"n": int(len(d))}
        sp = stats.spearmanr(d["proxy_bits_per_latent"], d["dedicated_bits_per_latent"])
        kt = stats.kendalltau(d["proxy_bits_per_latent"], d["dedicated_bits_per_latent"])
        return {
            "n": int(len(d)),
            "spearman": float(sp.statistic),
            "spearman_p": float(sp.pvalue),
            "kendall": float(kt.statistic),
            "kendall_p": float(kt.pvalue),
        }

    both = df.dropna(subset=["proxy_bits_per_latent", "dedicated_bits_per_latent"])
    return {**corr(both), "orders_only": corr(both[both["source"] != "baseline"])}


# --- a search run's files ---------------------------------------------------------------
def baseline_orders(k: int) -> dict[str, od.DecodingOrder | None]:
    """Baselines as k×k orders where they tile a k×k patch (checkerboard needs even k)."""
    return {
        "hyperprior": od.DecodingOrder(np.zeros((k, k), dtype=int)),
        "checkerboard": od.DecodingOrder(np.indices((k, k)).sum(0) % 2) if k % 2 == 0 else None,
        "autoregressive": None,
    }


# --- search ---------------------------------------------------------------------------------


def symmetry_class(order: od.DecodingOrder) -> str:
    return str(order.canonical())


def candidate_rows(
    k: int, table: CostTable, found: dict, lat: LatentSet, dedicated: dict[str, dict], boot: Bootstrap
) -> pd.DataFrame:
    """Candidates and baselines, ranked on one basis (:mod:`orderopt.results`)."""
    candidates: dict[od.DecodingOrder, str] = dict(found)
    for name, order in od.published_orders(k).items():
        candidates[order] = name if order not in candidates else f"{candidates[order]}+{name}"
    rows, proxy_images = [], {}
    for order, source in candidates.items():
        rows.append(
            {
                "order": str(order),
                "stages": order.num_stages,
                "symmetry_class": symmetry_class(order),
                "source": source,
                "proxy_bits_per_latent": table.bits_per_latent(order),
            }
        )
        proxy_images[str(order)] = table.image_rates(order)
    hw = int(np.mean([e.y_hat.shape[1] * e.y_hat.shape[2] for e in lat.entries]))
    for name, order in baseline_orders(k).items():
        if order is not None:
            bpl = table.bits_per_latent(order)
            proxy_images[name] = table.image_rates(order)
        elif name == "autoregressive" and table.raster_image_bits is not None:
            bpl = float(table.raster_image_bits.sum()) / table.num_elements
            proxy_images[name] = table.raster_image_bits
        else:
            bpl = np.nan
        rows.append(
            {
                "order": name,
                "stages": {"hyperprior": 1, "checkerboard": 2}.get(name, hw),
                "symmetry_class": str(order) if order is not None else "raster over all latents",
                "source": "baseline",
                "proxy_bits_per_latent": bpl,
            }
        )
    for r in rows:
        r["dedicated_bits_per_latent"] = dedicated.get(r["order"], {}).get("bits_per_latent", np.nan)
    basis = choose_basis(rows)
    if basis == "proxy":
        per_image = proxy_images
    else:  # each dedicated model's bits per image, from its bpp of ŷ
        pixels = {e.name: e.num_pixels for e in lat.entries}
        per_image = {
            name: dedicated_image_bits(rec, pixels)
            for name, rec in dedicated.items()
            if len(rec.get("images", [])) == len(lat)
        }
    totals = LatentTotals(table.num_elements, table.num_pixels, table.z_bits)
    return build_rows(rows, per_image, basis, totals, boot)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


def print_table(df: pd.DataFrame, limit: int = 12) -> None:
    """The best ``limit`` candidates and every baseline, in rank order, gains with intervals."""
    keep = (df["source"] == "baseline") | (df.index.isin(df[df["source"] != "baseline"].index[:limit]))
    show = df[keep]

    def gain(r: pd.Series, b: str) -> str:
        g = r[f"gain_vs_{b}_pct"]
        if not np.isfinite(g):
            return "-"
        lo, hi = r[f"gain_vs_{b}_ci_low"], r[f"gain_vs_{b}_ci_high"]
        return f"{g:+.2f}" + (f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else "")

    table = pd.DataFrame(
        {
            "rank": show["rank"],
            "order": show["order"],
            "stages": show["stages"],
            "source": show["source"],
            "bpp": show["bpp"].map(lambda v: f"{v:.4f}" if np.isfinite(v) else "-"),
            "vs checkerboard % [95% CI]": [gain(r, "checkerboard") for _, r in show.iterrows()],
            "vs autoregressive % [95% CI]": [gain(r, "autoregressive") for _, r in show.iterrows()],
            "differs from best": show["distinguishable_from_best"].map({True: "yes", False: "no"}),
        }
    )
    basis = df["basis"].iloc[0] if len(df) else "proxy"
    print(f"rates on the {basis} basis; intervals: paired bootstrap over the images")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    hidden = len(df) - len(show)
    if hidden:
        print(f"({hidden} more candidates in candidates.csv)")


def frontier_table(k: int, table: CostTable, schedules) -> pd.DataFrame:
    """frontier.csv's rows, with the gains against checkerboard (even k) and autoregressive
    (when the proxy rates it) on the same proxy."""
    board = baseline_orders(k)["checkerboard"]
    raster = table.raster_image_bits
    return frontier_rows(
        schedules,
        table.num_elements,
        table.num_pixels,
        table.z_bits,
        None if board is None else table.rate(board),
        None if raster is None else float(raster.sum()),
    )


class Run:
    """A finished search run directory: its candidates, cost table and manifest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"run directory {self.path} does not exist")
        mf, csv = self.path / "manifest.json", self.path / "candidates.csv"
        if not mf.is_file() or not csv.is_file():
            raise UserError(
                f"{self.path} is not a finished orderopt search run (no manifest.json or "
                "candidates.csv); run python -m orderopt.search first or let it finish"
            )
        try:
            self.manifest = json.loads(mf.read_text())
            self.df = pd.read_csv(csv)
        except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise UserError(f"{self.path} holds damaged run files ({err})") from None
        if not isinstance(self.manifest, dict):
            raise UserError(f"{self.path} is not an orderopt search run (its manifest is not a JSON object)")
        if self.manifest.get("status") != "complete":
            raise UserError(f"the run in {self.path} did not finish; run the same search again to resume it")
        if "gain_basis" in self.df.columns:
            raise UserError(
                f"{self.path} was written by an older orderopt (mixed rate bases, no intervals); "
                "run its search again (the command is in its manifest.json)"
            )
        if list(self.df.columns) != COLUMNS or "arguments" not in self.manifest:
            raise UserError(f"{self.path} is not an orderopt search run (unexpected manifest or columns)")
        args = self.manifest["arguments"]
        self.patch = int(args["patch"])
        # held out on --images, --latents (named by the file's stem) or the embedded photographs
        latents = args.get("latents")
        self.held_out = args.get("images") or (Path(latents).stem if latents else EMBEDDED_NAME)
        self.label = (
            f"{self.path.name} ({self.patch}×{self.patch}, model {self.manifest.get('model_hash', '?')[:8]}, "
            f"held out: {self.held_out})"
        )
        costs = self.path / "costs.npz"
        self.table = CostTable.load(costs) if costs.is_file() else None
        frontier = self.path / "frontier.csv"
        self.frontier = None
        if frontier.is_file():
            try:
                self.frontier = pd.read_csv(frontier)
            except (pd.errors.ParserError, UnicodeDecodeError) as err:
                raise UserError(f"{frontier} is damaged ({err}); run its search again") from None
            if list(self.frontier.columns) != FRONTIER_COLUMNS:
                raise UserError(f"{frontier} has unexpected columns; run its search again")
        fraction = float(self.manifest.get("strategy", {}).get("table_fraction", 1.0))
        # How the frontier's schedules were chosen: over the exact table, or on a surrogate of a
        # fraction of it (the rates are exact either way).
        self.frontier_kind = (
            "exact" if fraction >= 1 else f"picked on a surrogate of {fraction:.3g} of the table, rates exact"
        )

    @property
    def orders(self) -> pd.DataFrame:
        return self.df[~self.df["order"].isin(BASELINES)]

    def baseline(self, name: str) -> pd.Series:
        return self.df[self.df["order"] == name].iloc[0]

    def verify_protocol(self) -> str:
        """How the run's dedicated models were trained, in words."""
        a = self.manifest.get("arguments", {})
        start = "fine-tuned from the proxy" if a.get("verify_init") == "proxy" else "trained from scratch"
        if a.get("verify_early_stop"):
            return (
                f"{start}, stopped early on a tenth of the training images (measured every "
                f"{a['verify_early_stop']} steps, at most {a.get('verify_steps', '?')})"
            )
        return f"{start}, {a.get('verify_steps', '?')} steps each"

    def paper(self) -> str | None:
        return str(od.paper_order(self.patch)) if self.patch in (2, 4) else None


# --- a run's manifest.json ---------------------------------------------------------------------
# the search arguments that decide a run's results: a finished run with the same ones is reused
SETTINGS = (
    "patch",
    "strategy",
    "model",
    "images",
    "latents",
    "proxy",
    "trials",
    "objective",
    "top",
    "random",
    "verify",
    "verify_steps",
    "verify_init",
    "verify_lr",
    "verify_curve",
    "verify_early_stop",
    "seed",
    "bootstrap",
    "train_images",
    "train_latents",
    "quality",
    "stages",
    "table_fraction",
    "mixture",
)
# options added after finished runs existed, with their defaults: left out of the key at the
# default, so that the same command still reuses those runs
ADDED_LATER = {"mixture": 1, "verify_curve": 0, "verify_early_stop": 0}
# what the manifest keeps of each dedicated model's record
DEDICATED_KEYS = (
    "bits_per_latent",
    "start_bits_per_latent",
    "bpp",
    "images",
    "config",
    "train_s",
    "init",
    "device",
    "held_out_curve",
    "stop_curve",
    "stopped_at",
    "steps_run",
)


def settings_key(args) -> str:
    """A short hash of the arguments in :data:`SETTINGS`."""
    settings = {k: getattr(args, k, None) for k in SETTINGS}
    for k, default in ADDED_LATER.items():  # runs made before the option keep their key
        if settings[k] in (None, default):
            del settings[k]
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def finished_run(out: Path, key: str) -> tuple[pd.DataFrame, dict] | None:
    """The candidates and manifest of the finished run in ``out`` made with settings ``key``,
    else None. The settings are the arguments only: whether its inputs are still the same is
    :func:`changed_inputs`'s question."""
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        m = json.loads(manifest_path.read_text())
        if m.get("status") == "complete" and m.get("settings_key") == key:
            return pd.read_csv(out / "candidates.csv"), m
    except (ValueError, AttributeError, OSError, pd.errors.ParserError) as err:
        raise UserError(f"run files in {out} are damaged ({err}); pass --force to recompute") from None
    return None


def changed_inputs(manifest: dict, identity: dict[str, str | None]) -> list[str]:
    """The entries of ``identity`` (hashes of the base model, images, proxy and shipped
    autoregressive model a run rates) that differ from those the finished run recorded: the
    same arguments name other inputs once a file behind a path changes (a retrained proxy, new
    shipped weights, other images in the folder). Manifests from before the ``identity`` record
    are compared on the hashes they hold (base model and proxy)."""
    old = manifest.get("identity")
    if not isinstance(old, dict):
        proxy = manifest.get("proxy") or {}
        old = {"model_hash": manifest.get("model_hash"), "proxy_hash": proxy.get("hash")}
    return [k for k, v in identity.items() if k in old and old[k] != v]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "scipy", "optuna", "pandas", "orderopt"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def latent_summary(lat: LatentSet, table: CostTable) -> dict:
    return {
        "images": len(lat),
        "elements": table.num_elements,
        "pixels": table.num_pixels,
        "latent_channels": lat.latent_channels,
        "mean_height": float(np.mean([e.y_hat.shape[1] for e in lat.entries])),
        "mean_width": float(np.mean([e.y_hat.shape[2] for e in lat.entries])),
    }


def dedicated_summary(dedicated: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: rec[k] for k in DEDICATED_KEYS if k in rec} for name, rec in dedicated.items()}
