"""Latent extraction and the versioned on-disk latent cache.

A latent set holds, per image, what every context model needs: ŷ (M×h×w integers), the
hyper features h = h_s(ẑ) (C_h×h×w, the Gaussian parameters predicted from ẑ alone), the
bits of ẑ, and the pixel count of the original image (for bits per pixel).

File format (``torch.save`` of a dict, loadable with ``weights_only=True``; the same format
carries latents of any other codec)::

    {"format": "orderopt-latents", "version": 1,
     "model_hash": str,        # identifies the codec ("external" for other codecs)
     "images_hash": str,       # identifies the image set
     "entries": [{"name": str,
                  "y_hat": int16 tensor (M, h, w),
                  "hyper": float32 tensor (C_h, h, w),
                  "z_bits": float,          # side-information bits (0 if unknown)
                  "num_pixels": int}, ...]}

Latents of another codec can also come as ``.npz`` with arrays ``y_hat`` (N, M, h, w),
``hyper`` (N, C_h, h, w), ``num_pixels`` (N,) and optionally ``z_bits`` (N,) and ``names``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import EMBEDDED_NAME, NamedImage, images_fingerprint, load_images, pad_to_multiple
from .errors import HelpFormatter, UserError
from .files import load_versioned, save_torch
from .model import DEFAULT_QUALITY, HyperpriorCodec, load_model

FORMAT = "orderopt-latents"
VERSION = 1


def default_cache_dir() -> Path:
    """``$ORDEROPT_CACHE`` or ``~/.cache/orderopt``."""
    return Path(os.environ.get("ORDEROPT_CACHE", Path.home() / ".cache" / "orderopt"))


@dataclass(frozen=True)
class LatentEntry:
    name: str
    y_hat: torch.Tensor  # (M, h, w) float32 holding integers
    hyper: torch.Tensor  # (C_h, h, w) float32
    z_bits: float
    num_pixels: int


@dataclass(frozen=True)
class LatentSet:
    entries: tuple[LatentEntry, ...]
    model_hash: str
    images_hash: str

    def __post_init__(self):
        if not self.entries:
            raise UserError("latent set is empty")
        m = {e.y_hat.shape[0] for e in self.entries}
        c = {e.hyper.shape[0] for e in self.entries}
        if len(m) > 1 or len(c) > 1:
            raise UserError(f"latents disagree in channels: ŷ {sorted(m)}, hyper {sorted(c)}")
        for e in self.entries:
            if e.y_hat.dim() != 3 or e.hyper.dim() != 3 or e.y_hat.shape[1:] != e.hyper.shape[1:]:
                raise UserError(
                    f"latents of {e.name!r}: ŷ {tuple(e.y_hat.shape)} and hyper {tuple(e.hyper.shape)} "
                    "must be (channels, h, w) of equal h and w"
                )
            if not e.num_pixels > 0 or not np.isfinite(e.z_bits) or e.z_bits < 0:
                raise UserError(
                    f"latents of {e.name!r}: num_pixels {e.num_pixels} and z_bits {e.z_bits} must be "
                    "positive (the image's pixel count) and non-negative"
                )
            if e.y_hat.numel() == 0:
                raise UserError(f"latents of {e.name!r} are empty ({tuple(e.y_hat.shape)})")

    @property
    def latent_channels(self) -> int:
        return int(self.entries[0].y_hat.shape[0])

    @property
    def hyper_channels(self) -> int:
        return int(self.entries[0].hyper.shape[0])

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def min_size(self) -> tuple[int, int]:
        """Smallest latent height and width in the set."""
        return (min(e.y_hat.shape[1] for e in self.entries), min(e.y_hat.shape[2] for e in self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def subset(self, names: Sequence[str]) -> LatentSet:
        keep = set(names)
        return LatentSet(tuple(e for e in self.entries if e.name in keep), self.model_hash, self.images_hash)

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary file renamed into place)."""
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "model_hash": self.model_hash,
            "images_hash": self.images_hash,
            "entries": [
                {
                    "name": e.name,
                    "y_hat": e.y_hat.to(torch.int16),
                    "hyper": e.hyper.float(),
                    "z_bits": float(e.z_bits),
                    "num_pixels": int(e.num_pixels),
                }
                for e in self.entries
            ],
        }
        save_torch(payload, path)


def load_latents(path: str | Path) -> LatentSet:
    """Read a latent file (``.pt`` in the format above, or ``.npz``); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"latent file {path} does not exist")
    if path.suffix == ".npz":
        return _load_npz(path)
    d = load_versioned(path, FORMAT, VERSION, "latent file")
    try:
        entries = tuple(
            LatentEntry(
                str(e["name"]),
                e["y_hat"].float(),
                e["hyper"].float(),
                float(e.get("z_bits", 0.0)),
                int(e["num_pixels"]),
            )
            for e in d["entries"]
        )
    except (KeyError, AttributeError, TypeError) as err:
        raise UserError(f"latent file {path} lacks a field of an entry: {err}") from None
    return LatentSet(entries, str(d.get("model_hash", "external")), str(d.get("images_hash", "")))


def _load_npz(path: Path) -> LatentSet:
    try:
        z = np.load(path, allow_pickle=False)
        y_hat, hyper, npix = z["y_hat"], z["hyper"], z["num_pixels"]
        z_bits = z["z_bits"] if "z_bits" in z else np.zeros(len(y_hat))
        names = [str(n) for n in z["names"]] if "names" in z else [f"image{i}" for i in range(len(y_hat))]
    except KeyError as err:
        raise UserError(
            f"latent file {path} lacks the array {err} (needs y_hat, hyper, num_pixels)"
        ) from None
    except (OSError, ValueError) as err:
        raise UserError(f"latent file {path} cannot be read as .npz ({err})") from None
    if not (len(y_hat) == len(hyper) == len(npix) == len(z_bits) == len(names)):
        raise UserError(f"latent file {path}: y_hat, hyper, num_pixels, z_bits and names differ in length")
    if y_hat.ndim != 4 or hyper.ndim != 4:
        raise UserError(f"latent file {path}: y_hat and hyper must be 4-D (N, channels, h, w)")
    if not np.array_equal(y_hat, np.round(y_hat)):
        raise UserError(f"latent file {path}: y_hat must hold quantized (integer) values")
    entries = tuple(
        LatentEntry(
            n,
            torch.from_numpy(np.asarray(y, np.float32)),
            torch.from_numpy(np.asarray(h, np.float32)),
            float(b),
            int(p),
        )
        for n, y, h, b, p in zip(names, y_hat, hyper, z_bits, npix, strict=True)
    )
    return LatentSet(entries, "external", path.name)


@torch.no_grad()
def extract_latents(
    model: HyperpriorCodec, images: Sequence[NamedImage], model_hash: str, progress: bool = True
) -> LatentSet:
    """Run g_a, h_a, h_s of ``model`` on every image (padded to a multiple of 64), on the
    model's device (float32 convolutions there too); the latents are returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    entries = []
    for im in tqdm(images, desc="latents", unit="img", disable=not progress):
        x, _ = pad_to_multiple(im.image[None])
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            a = model.analyze(x.to(device))
        entries.append(
            LatentEntry(im.name, a.y_hat[0].cpu(), a.hyper[0].cpu(), float(a.z_bits[0]), im.num_pixels)
        )
    return LatentSet(tuple(entries), model_hash, images_fingerprint(list(images)))


def cached_latents(
    model: HyperpriorCodec,
    model_hash: str,
    images: Sequence[NamedImage],
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[LatentSet, Path]:
    """Latents of ``images`` under ``model``, from the cache when model and images are
    unchanged (keyed by both hashes), else extracted and cached. Returns the set and its file."""
    images_hash = images_fingerprint(list(images))
    path = Path(cache_dir or default_cache_dir()) / "latents" / f"{model_hash}-{images_hash}.pt"
    if path.is_file():
        try:
            cached = load_latents(path)
            if cached.model_hash == model_hash and cached.images_hash == images_hash:
                return cached, path
        except UserError:
            pass  # a damaged or outdated cache file is rebuilt below
    latents = extract_latents(model, images, model_hash, progress)
    latents.save(path)
    return latents, path


def held_out_latents(
    latents: str | None,
    model: str | None,
    quality: int | None,
    images: str | None,
    cache_dir: str | None,
) -> tuple[LatentSet, dict]:
    """The held-out latents of a search: the file ``latents``, else those of ``images`` (default:
    the embedded photographs) under ``model`` (default: the shipped one of ``quality``), from the
    cache. Also returns what the run's manifest records of them."""
    if latents:
        lat = load_latents(latents)
        return lat, {"latents": str(latents), "model_hash": lat.model_hash}
    codec, meta = load_model(model, quality)
    lat, path = cached_latents(codec, meta["hash"], load_images(images), cache_dir)
    return lat, {
        "model": str(model or f"shipped q{quality or DEFAULT_QUALITY}"),
        "model_hash": meta["hash"],
        "images": images or EMBEDDED_NAME,
        "image_names": lat.names,
        "latent_cache": str(path),
    }


def load_image_folders(folders: Sequence[str | Path] | None) -> list[NamedImage]:
    """Images of one or more folders (names prefixed by the folder when several), or the
    embedded photographs when ``folders`` is empty."""
    if not folders:
        return load_images(None)
    if len(folders) == 1:
        return load_images(folders[0])
    out = []
    for folder in folders:
        out += [NamedImage(f"{Path(folder).name}/{im.name}", im.image) for im in load_images(folder)]
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m orderopt.latents --images DIR [DIR ...] --out FILE``: extract latents once."""

    from .devices import add_device_option, torch_device
    from .errors import OneLineErrorParser
    from .model import add_model_options, check_model_options, load_model

    p = OneLineErrorParser(
        prog="python -m orderopt.latents",
        description="Extract latents of images to a file (the format in orderopt.latents' documentation).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--images", nargs="*", help="image folder(s) (default: the embedded photographs)")
    add_model_options(p)
    p.add_argument("--out", required=True, help="latent file to write (.pt)")
    add_device_option(p)
    args = p.parse_args(argv)
    check_model_options(args)
    model, meta = load_model(args.model, args.quality)
    lat = extract_latents(model.to(torch_device(args.device)), load_image_folders(args.images), meta["hash"])
    lat.save(args.out)
    print(f"{len(lat)} images, ŷ {lat.latent_channels} channels -> {args.out}")
    return 0


if __name__ == "__main__":
    from .errors import run_cli

    raise SystemExit(run_cli(main))
