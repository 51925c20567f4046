"""The models ``load`` resolves, the device they run on, and a loaded
model's checkpoint hash.  (Loading itself, which reads a weights file, is
``jclip.pretrained.load``: models/ does not import weights/.)"""
from typing import List, Optional

import jittor as jt

from ..catalog import available as _registered
from ..io import sha256_file
from .clip import CLIP


def available_models() -> List[str]:
    """The CLIP names ``load`` resolves (after ``convert.py``): OpenAI's nine,
    then open_clip's "ARCH/tag" names, in the catalogue's order.
    """
    return _registered("clip")


def use_device(device: Optional[str] = None) -> str:
    """Select Jittor's device for everything that runs next.

    Parameters: ``device`` None (CUDA when Jittor has it, else the CPU),
    "cpu" or "cuda" (RuntimeError when Jittor has no CUDA).
    Returns: the device chosen, "cpu" or "cuda".
    """
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not jt.has_cuda:
        raise RuntimeError("device='cuda' asked for, but Jittor has no CUDA here "
                           "(set nvcc_path to your nvcc before importing jclip on a GPU machine)")
    jt.flags.use_cuda = int(device != "cpu" and bool(jt.has_cuda))
    return "cuda" if jt.flags.use_cuda else "cpu"


def weights_sha256(model: CLIP) -> str:
    """SHA-256 of the checkpoint a loaded model came from.

    Parameters: ``model`` a model from ``load``.
    Returns: the hex digest recorded by convert.py, else the file hashed now
    (once); feature caches and trained heads are keyed by it.
    """
    if getattr(model, "_weights_sha256", None) is None:
        model._weights_sha256 = sha256_file(model.weights_path)
    return model._weights_sha256
