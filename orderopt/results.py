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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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
