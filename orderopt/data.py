"""Images: discovery, decoding, the embedded photographs, padding, and training crops.

Images are float tensors (3, H, W) in [0, 1]. Every failure names the file: nothing is
skipped silently.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MIN_SIDE = 64  # the model downsamples by 64 (latent 1/16, hyper-latent 1/64)
#: Largest image read or decoded, in megapixels: a 40-megapixel image already needs several GB
#: of activations in the transforms. Raise it with the environment variable below.
MAX_MEGAPIXELS = 40.0
MAX_MEGAPIXELS_ENV = "ORDEROPT_MAX_MEGAPIXELS"


def max_pixels() -> int:
    """The image-size limit in pixels: :data:`MAX_MEGAPIXELS`, or ``$ORDEROPT_MAX_MEGAPIXELS``."""
    text = os.environ.get(MAX_MEGAPIXELS_ENV)
    if text is None:
        return int(MAX_MEGAPIXELS * 1e6)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(f"{MAX_MEGAPIXELS_ENV}={text!r} is not a positive number of megapixels")
    return int(value * 1e6)


def check_size(height: int, width: int, what: str) -> None:
    """Refuse an image larger than :func:`max_pixels` before anything is allocated for it."""
    limit = max_pixels()
    if height * width > limit:
        raise UserError(
            f"{what} is {width}×{height} pixels ({height * width / 1e6:.1f} megapixels), above the "
            f"limit of {limit / 1e6:g}; raise it with {MAX_MEGAPIXELS_ENV}=N if the machine has the memory"
        )


#: The real colour photographs shipped inside scikit-image's wheel (no download needed).
EMBEDDED = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "motorcycle": "motorcycle_left.png",
    "rocket": "rocket.jpg",
}


@dataclass(frozen=True)
class NamedImage:
    name: str
    image: torch.Tensor  # (3, H, W) float32 in [0, 1]

    @property
    def num_pixels(self) -> int:
        return int(self.image.shape[-2] * self.image.shape[-1])


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted); an error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return files


def read_rgb(path: str | Path, min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 array; clear errors for bad files."""
    path = Path(path)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow's own decompression-bomb check is replaced by ours (same idea, a documented and
        # configurable limit), which reads the size from the header before any pixel is decoded.
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            check_size(im.height, im.width, f"image {path}")
            im.load()
            arr = to_rgb8(im)
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except UserError:
        raise
    except IsADirectoryError:
        raise UserError(f"image {path} is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"image {path} cannot be decoded ({err}); is it truncated or not an image?") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise UserError(f"image {path} is {w}×{h} pixels; at least {min_side}×{min_side} is needed")
    return arr


def to_rgb8(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of any Pillow image. 16-bit and 32-bit modes are scaled to 8 bits
    (Pillow's own ``convert`` clips them, turning most 16-bit pixels white). Integer modes
    hold 16-bit samples (PNG, TIFF); float images are taken as [0, 1]."""
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if im.mode == "F" else 255.0 / 65535.0
        grey = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div_(255.0)


def load_image(path: str | Path) -> torch.Tensor:
    """One image file as a (3, H, W) float tensor in [0, 1]."""
    return to_tensor(read_rgb(path))


EMBEDDED_NAME = "embedded photographs"  # how runs name the default held-out images


def embedded_image_paths() -> dict[str, Path]:
    """Paths of the embedded photographs inside the installed scikit-image."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return {name: root / fname for name, fname in EMBEDDED.items()}


def load_images(source: str | Path | None = None) -> list[NamedImage]:
    """Images of a folder, or the embedded photographs when ``source`` is None."""
    if source is None:
        return [NamedImage(name, load_image(p)) for name, p in embedded_image_paths().items()]
    paths = find_images(source)
    root = Path(source)
    return [NamedImage(str(p.relative_to(root)), load_image(p)) for p in paths]


def images_fingerprint(images: list[NamedImage]) -> str:
    """Content hash of a set of images (names and pixels), for cache keys."""
    h = hashlib.sha256()
    for im in images:
        h.update(im.name.encode())
        h.update(str(tuple(im.image.shape)).encode())
        h.update((im.image * 255).round().to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def pad_to_multiple(x: torch.Tensor, multiple: int = 64) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (…, H, W) on the bottom and right by edge replication to a multiple of ``multiple``.

    Returns the padded tensor and the original (H, W) for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        flat = x.reshape(-1, *x.shape[-3:]) if x.dim() >= 3 else x[None, None]
        flat = F.pad(flat, (0, pw, 0, ph), mode="replicate")
        x = flat.reshape(*x.shape[:-2], h + ph, w + pw)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]


class CropSampler:
    """Random training crops: downscale by a random factor in [min_scale, 1] (hides JPEG
    artefacts of the source photos), crop ``size``×``size``, random horizontal flip."""

    def __init__(self, paths: list[Path], size: int = 128, min_scale: float = 0.5, seed: int = 0):
        self.images = [read_rgb(p, min_side=size) for p in paths]
        self.size = size
        self.min_scale = min_scale
        self.rng = np.random.default_rng(seed)

    def sample(self, batch: int) -> torch.Tensor:
        out = np.empty((batch, self.size, self.size, 3), np.uint8)
        for b in range(batch):
            img = self.images[self.rng.integers(len(self.images))]
            h, w = img.shape[:2]
            scale = self.rng.uniform(max(self.min_scale, self.size / min(h, w)), 1.0)
            src = min(int(round(self.size / scale)), h, w)
            y, x = self.rng.integers(h - src + 1), self.rng.integers(w - src + 1)
            crop = img[y : y + src, x : x + src]
            if src != self.size:
                crop = np.asarray(Image.fromarray(crop).resize((self.size, self.size), Image.BICUBIC))
            if self.rng.random() < 0.5:
                crop = crop[:, ::-1]
            out[b] = crop
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
