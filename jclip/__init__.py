"""jclip: Jittor CLIP and few-shot image classification.

Importing jclip first sets safe Jittor defaults (no CUDA build without a GPU,
the system oneDNN instead of a download); import jclip before jittor.
"""
from ._jittor_env import configure as _configure

_configure()

__version__ = "0.1.0"
