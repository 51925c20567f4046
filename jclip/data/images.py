"""Image decoding, eval preprocessing, train-time augmentation, threaded loading.

``Preprocess`` reproduces OpenAI CLIP's evaluation transform exactly (resize
the short side with PIL bicubic, centre crop with torchvision's rounding, /255,
normalise) as plain numpy, deterministic, with no random flips.  ConvNeXt uses
the same class with ImageNet statistics and a 256 -> 224 crop; each model's
input size, statistics and crop come from its card (``jclip.catalog``,
``preprocess_for``).  ``TrainTransform`` is the fine-tuner's augmentation
(random resized crop + flip) with the same normalisation.

``load_images`` / ``iter_batches`` turn a list of paths into float32 batches
using a thread pool (PIL releases the GIL while decoding and resizing); a file
that cannot be read is reported by name and, unless ``strict``, left out
instead of stopping a run over thousands of images.  Random augmentations
draw from one seed per image, so batches do not depend on thread scheduling.
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..catalog import get_card

# OpenAI CLIP's statistics (its cards'), the default normalisation.
CLIP_MEAN, CLIP_STD = get_card("ViT-B/32").mean, get_card("ViT-B/32").std

# the file names jclip treats as images, everywhere (folder scans, test folders)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

Transform = Callable[[Image.Image], np.ndarray]


class ImageLoadError(ValueError):
    """A file that cannot be decoded as an image (the message names it)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) as 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: PIL's convert would clip everything above 255 to
        # white, so rescale the value range to 8 bits first.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette image with alpha goes straight to RGB
    return img.convert("RGB")


def normalize(img: Image.Image, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """8-bit RGB image -> (3, H, W) float32 ``(x / 255 - mean) / std``."""
    arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return (arr - mean) / std


def _stats(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(3, 1, 1)


# open_clip's eval resize modes and filters (open_clip/transform.py image_transform).
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


class Preprocess:
    """PIL image -> (3, size, size) float32 array, as OpenAI's/timm's/open_clip's eval transform.

    Parameters: ``size`` the square crop; ``resize`` the short side before the
    crop (default ``size``, CLIP's way); ``mean``/``std`` per-channel
    statistics; ``interpolation`` "bicubic" or "bilinear"; ``resize_mode``
    open_clip's "shortest" (resize the short side, centre-crop), "longest"
    (fit the long side, centre-pad with black) or "squash" (resize to
    size x size, aspect not kept).
    Calling it returns the normalised crop (any PIL mode is converted to RGB).
    """

    def __init__(self, size: int = 224, resize: Optional[int] = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 interpolation: str = "bicubic", resize_mode: str = "shortest"):
        if interpolation not in INTERPOLATIONS or resize_mode not in RESIZE_MODES:
            raise ValueError(f"Preprocess: interpolation {interpolation!r} / resize_mode {resize_mode!r} "
                             f"not supported ({', '.join(INTERPOLATIONS)} / {', '.join(RESIZE_MODES)})")
        self.size = size
        self.resize = resize or size  # short side before the centre crop
        self.mean = _stats(mean)
        self.std = _stats(std)
        self.interpolation, self.resize_mode = interpolation, resize_mode

    @property
    def id(self) -> str:
        """A string naming this transform exactly (feature caches key on it)."""
        other = "" if (self.interpolation, self.resize_mode) == ("bicubic", "shortest") else \
            f"-{self.interpolation}-{self.resize_mode}"
        return (f"resize{self.resize}-bicubic-crop{self.size}-mean{tuple(self.mean.ravel())}"
                f"-std{tuple(self.std.ravel())}{other}")

    def _other_modes(self, img: Image.Image) -> np.ndarray:
        """open_clip's "squash" (Resize((size, size))) and "longest"
        (ResizeKeepRatio(longest=1) + CenterCropOrPad with black)."""
        filt = INTERPOLATIONS[self.interpolation]
        if self.resize_mode == "squash":
            return normalize(img.resize((self.size, self.size), filt), self.mean, self.std)
        w, h = img.size
        ratio = max(h / self.size, w / self.size)
        new_w, new_h = round(w / ratio), round(h / ratio)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), filt)
        pad_l, pad_t = max(self.size - new_w, 0) // 2, max(self.size - new_h, 0) // 2
        canvas = Image.new("RGB", (max(new_w, self.size), max(new_h, self.size)))
        canvas.paste(img, (pad_l, pad_t))
        top = int(round((canvas.size[1] - self.size) / 2.0))
        left = int(round((canvas.size[0] - self.size) / 2.0))
        return normalize(canvas.crop((left, top, left + self.size, top + self.size)), self.mean, self.std)

    def __call__(self, img: Image.Image) -> np.ndarray:
        img = to_rgb(img)
        if self.resize_mode != "shortest":
            return self._other_modes(img)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        # torchvision.transforms.Resize(int): the long side is truncated, not rounded
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
        # torchvision.transforms.CenterCrop: offsets use Python's round()
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        return normalize(img, self.mean, self.std)

    def __repr__(self) -> str:
        return f"Preprocess({self.id})"


def _bicubic_card(name: str):
    """The card of ``name``, refused unless Preprocess can do its transform:
    bicubic resize of the shortest side, then a centre crop."""
    card = get_card(name)
    resize_mode = getattr(card, "resize_mode", "shortest")   # open_clip cards may squash or pad
    if card.interpolation != "bicubic" or resize_mode != "shortest":
        raise ValueError(f"model {name!r}: {card.interpolation} resize of the {resize_mode} side "
                         f"is not supported (only bicubic, shortest side)")
    return card


def preprocess_for(name: str, size: Optional[int] = None) -> Preprocess:
    """The eval transform on model ``name``'s registry card.

    Parameters: ``name`` a registry name ("ViT-B/32", "convnextv2_base");
    ``size`` another crop size, keeping the card's crop ratio (default: the
    card's input size).
    Returns: a ``Preprocess``.
    """
    card = get_card(name)   # open_clip cards carry their filter and resize mode
    size = size or card.input_size
    return Preprocess(size, resize=int(size / card.crop_pct), mean=card.mean, std=card.std,
                      interpolation=card.interpolation, resize_mode=getattr(card, "resize_mode", "shortest"))


class TrainTransform:
    """Train-time augmentation: random resized crop (torchvision's sampling,
    bicubic) + horizontal flip, then the model's normalisation.

    Parameters: ``size`` the output side; ``scale`` / ``ratio`` the crop's
    area fraction and aspect ranges; ``mean``/``std`` the statistics.
    Called as ``transform(img, rng)`` with a ``numpy.random.RandomState``;
    returns a (3, size, size) float32 array.
    """

    def __init__(self, size: int, scale: Tuple[float, float] = (0.35, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.mean = _stats(mean)
        self.std = _stats(std)

    @classmethod
    def for_model(cls, name: str, size: Optional[int] = None,
                  scale: Tuple[float, float] = (0.35, 1.0)) -> "TrainTransform":
        """The augmentation with model ``name``'s card statistics (size default: the card's)."""
        card = _bicubic_card(name)
        return cls(size or card.input_size, scale, mean=card.mean, std=card.std)

    def __call__(self, img: Image.Image, rng: np.random.RandomState) -> np.ndarray:
        img = to_rgb(img)
        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = rng.randint(0, w - cw + 1), rng.randint(0, h - ch + 1)
                break
        else:  # no sample fitted: the whole image
            cw, ch = w, h
            left, top = 0, 0
        img = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + cw, top + ch))
        if rng.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return normalize(img, self.mean, self.std)


def read_image(path: str, transform: Transform) -> np.ndarray:
    """One file through ``transform``; any failure becomes ImageLoadError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return transform(img)
    except Exception as e:  # PIL raises many types for bad files
        raise ImageLoadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def default_workers() -> int:
    """Decoding threads: the cores plus two (PIL waits on I/O too), at most 16."""
    return min(16, (os.cpu_count() or 2) + 2)


def _seeded(transform, seed):
    """``transform`` as a one-argument function; an augmenting one gets its own RandomState(seed)."""
    if seed is None:
        return transform
    return lambda img: transform(img, np.random.RandomState(seed))


def load_images(paths: Sequence[str], transform: Transform, workers: Optional[int] = None,
                strict: bool = False, pool: Optional[ThreadPoolExecutor] = None,
                seeds: Optional[Sequence[int]] = None
                ) -> Tuple[np.ndarray, List[int], List[Tuple[str, str]]]:
    """Load ``paths`` into one (N_ok, 3, S, S) float32 batch.

    Parameters: ``transform`` PIL image -> array (``Preprocess``), or, with
    ``seeds`` (one int per path), ``transform(img, rng)`` (``TrainTransform``);
    ``workers`` threads (default ``default_workers()``) unless ``pool`` is
    given; ``strict`` raise ImageLoadError on the first bad file.
    Returns: ``(batch, ok, errors)``: ``ok`` lists the indices into ``paths``
    that the batch rows hold, ``errors`` lists ``(path, message)`` for files
    that could not be read.
    """
    def one(path, seed):
        try:
            return read_image(path, _seeded(transform, seed)), None
        except ImageLoadError as e:
            if strict:
                raise
            return None, str(e)

    seeds = [None] * len(paths) if seeds is None else list(seeds)
    if pool is None:
        with ThreadPoolExecutor(workers or default_workers()) as own:
            results = list(own.map(one, paths, seeds))
    else:
        results = list(pool.map(one, paths, seeds))
    ok = [i for i, (arr, _) in enumerate(results) if arr is not None]
    errors = [(paths[i], err) for i, (_, err) in enumerate(results) if err is not None]
    size = getattr(transform, "size", None)
    if ok:
        batch = np.stack([results[i][0] for i in ok])
    else:
        batch = np.zeros((0, 3, size or 0, size or 0), dtype=np.float32)
    return batch, ok, errors


def iter_batches(paths: Sequence[str], transform: Transform, batch_size: int = 64,
                 workers: Optional[int] = None, strict: bool = False,
                 seeds: Optional[Sequence[int]] = None
                 ) -> Iterator[Tuple[List[int], np.ndarray, List[Tuple[str, str]]]]:
    """Yield ``(indices, batch, errors)`` over ``paths`` in batches of ``batch_size``.

    The next batch is decoded in the thread pool while the caller uses the
    current one, so the model never waits on JPEG decoding.  ``indices`` index
    ``paths``; the other parameters are ``load_images``'s.
    """
    paths = list(paths)
    seeds = None if seeds is None else list(seeds)
    starts = list(range(0, len(paths), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(workers or default_workers()) as pool, ThreadPoolExecutor(1) as ahead:
        def job(start):
            part = None if seeds is None else seeds[start:start + batch_size]
            return start, load_images(paths[start:start + batch_size], transform, strict=strict,
                                      pool=pool, seeds=part)

        pending = ahead.submit(job, starts[0])
        for nxt in starts[1:] + [None]:
            start, (batch, ok, errors) = pending.result()
            pending = ahead.submit(job, nxt) if nxt is not None else None
            yield [start + i for i in ok], batch, errors
