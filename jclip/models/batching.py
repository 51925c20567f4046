"""Running a model over a batch in the slice size its device handles best.

On CPU, oneDNN's convolutions slow down on large batches (the activations no
longer fit in cache): on 2 cores RN101 encodes 6.3 images/s at batch 16 but
3.9 at batch 64, ConvNeXt-V2-B 3.0 at batch 8 and 2.6 at 32.  Convolutional
towers therefore name a ``cpu_batch``; the image loaders keep reading whole
batches (so decoding stays one batch ahead) and only the forward is sliced.
Transformers run whole batches (ViT-B/32: 11.8 images/s at 64, 10.6 at 16).
"""
from typing import Callable, Optional

import jittor as jt
import numpy as np


def run_in_slices(fn: Callable[[np.ndarray], jt.Var], x: np.ndarray,
                  cpu_batch: Optional[int] = None) -> np.ndarray:
    """``fn(x)`` as a numpy array, on CPU in slices of ``cpu_batch`` rows when
    that is given; on CUDA always the whole batch.

    Parameters: ``fn`` a forward pass (array of rows -> Jittor Var with as
    many rows); ``x`` the batch; ``cpu_batch`` rows per slice on CPU.
    Returns: the rows of ``fn(x)`` in order, concatenated.
    """
    if jt.flags.use_cuda or not cpu_batch or len(x) <= cpu_batch:
        return fn(x).numpy()
    return np.concatenate([fn(x[s:s + cpu_batch]).numpy() for s in range(0, len(x), cpu_batch)])
