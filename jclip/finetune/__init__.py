"""Fine-tuning ConvNeXt-V2 (the contest's dog head).

    from jclip import finetune
    r = finetune.train(weights, "shots.txt", labels=(244, 373), out="dogs.safetensors")
    model = finetune.load_finetuned(weights, "dogs.safetensors")
    kept, top, probs = finetune.predict(model, paths, k=5)

Modules: ``data`` (label ranges, lists, image batches), ``model`` (trunk /
tail split, head files), ``training`` (loss, schedule, loop), ``predict``
(top-k), ``cli`` (``python -m jclip.finetune``).
"""
from .data import parse_label_range, read_list
from .model import load_finetuned
from .predict import predict
from .training import train

__all__ = ["train", "load_finetuned", "predict", "parse_label_range", "read_list"]
