"""Image preprocessing and batched, threaded image loading.

``Preprocess`` reproduces OpenAI CLIP's evaluation transform exactly (resize
the short side with PIL bicubic, centre crop with torchvision's rounding, /255,
normalise) as plain numpy, deterministic, with no random flips.  ConvNeXt uses
the same class with ImageNet statistics and a 256 -> 224 crop.

``load_images`` turns a list of paths into one float32 batch using a thread
pool (PIL releases the GIL while decoding and resizing); a file that cannot be
read is reported by name and, unless ``strict``, left out instead of stopping
a run over thousands of images.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the file names jclip treats as images, everywhere (folder scans, test folders)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageLoadError(ValueError):
    pass


def to_rgb(img):
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


class Preprocess:
    """PIL image -> (3, size, size) float32 array, as OpenAI's/timm's eval transform."""

    def __init__(self, size=224, resize=None, mean=CLIP_MEAN, std=CLIP_STD):
        self.size = size
        self.resize = resize or size  # short side before the centre crop
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    @property
    def id(self):
        """A string naming this transform exactly (feature caches key on it)."""
        return f"resize{self.resize}-bicubic-crop{self.size}-mean{tuple(self.mean.ravel())}-std{tuple(self.std.ravel())}"

    def __call__(self, img):
        img = to_rgb(img)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        # torchvision.transforms.Resize(int): the long side is truncated, not rounded
        new_short, new_long = self.resize, int(self.resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BICUBIC)
        # torchvision.transforms.CenterCrop: offsets use Python's round()
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
        return (arr - self.mean) / self.std

    def __repr__(self):
        return f"Preprocess({self.id})"


def clip_preprocess(size=224):
    return Preprocess(size)


def imagenet_preprocess(size=224, crop_pct=0.875):
    return Preprocess(size, resize=int(size / crop_pct), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def read_image(path, transform):
    """One file through ``transform``; any failure becomes ImageLoadError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return transform(img)
    except Exception as e:  # PIL raises many types for bad files
        raise ImageLoadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def default_workers():
    return min(16, (os.cpu_count() or 2) + 2)


def load_images(paths, transform, workers=None, strict=False, pool=None):
    """Load ``paths`` into one (N_ok, 3, S, S) float32 batch.

    Returns ``(batch, ok, errors)``: ``ok`` lists the indices into ``paths``
    that the batch rows hold, ``errors`` lists ``(path, message)`` for files
    that could not be read.  With ``strict`` the first bad file raises.
    """
    def one(path):
        try:
            return read_image(path, transform), None
        except ImageLoadError as e:
            if strict:
                raise
            return None, str(e)

    if pool is None:
        with ThreadPoolExecutor(workers or default_workers()) as own:
            results = list(own.map(one, paths))
    else:
        results = list(pool.map(one, paths))
    ok = [i for i, (arr, _) in enumerate(results) if arr is not None]
    errors = [(paths[i], err) for i, (_, err) in enumerate(results) if err is not None]
    size = getattr(transform, "size", None)
    if ok:
        batch = np.stack([results[i][0] for i in ok])
    else:
        batch = np.zeros((0, 3, size or 0, size or 0), dtype=np.float32)
    return batch, ok, errors


def iter_batches(paths, transform, batch_size=64, workers=None, strict=False):
    """Yield ``(indices, batch, errors)`` over ``paths`` in batches.

    The next batch is decoded in the thread pool while the caller encodes the
    current one, so the model never waits on JPEG decoding.
    """
    paths = list(paths)
    starts = list(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(workers or default_workers()) as pool, ThreadPoolExecutor(1) as ahead:
        def job(start):
            return start, load_images(paths[start:start + batch_size], transform, strict=strict, pool=pool)

        pending = ahead.submit(job, starts[0]) if starts else None
        for nxt in starts[1:] + [None]:
            start, (batch, ok, errors) = pending.result()
            pending = ahead.submit(job, nxt) if nxt is not None else None
            yield [start + i for i in ok], batch, errors
