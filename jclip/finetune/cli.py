"""``python -m jclip.finetune train|predict``: the command line.

    python -m jclip.finetune train --weights convnextv2_base.pkl \\
        --list train.txt --root data --labels 244-373 --out out/dogs.safetensors
    python -m jclip.finetune predict --weights convnextv2_base.pkl \\
        --head out/dogs.safetensors --images TestSetB --out dogs_top5.txt
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from ..io import atomic_write_text
from ..weights.checkpoint import CheckpointError
from .model import load_finetuned
from .predict import predict
from .training import train


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m jclip.finetune``."""
    p = argparse.ArgumentParser(prog="python -m jclip.finetune",
                                description="Fine-tune / apply a ConvNeXt-V2 head.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a head on a `path label` list")
    t.add_argument("--weights", required=True, help="backbone weights (.pkl or .pt)")
    t.add_argument("--list", required=True, help="training list: `path label` lines")
    t.add_argument("--root", help="folder the list's paths are relative to")
    t.add_argument("--labels", help="label range kept, e.g. 244-373 (ids -> 0..129)")
    t.add_argument("--val-list", help="held-out list used to pick the epoch")
    t.add_argument("--out", required=True, help="head file to write (.safetensors; .pkl writes Jittor's format)")
    t.add_argument("--mode", choices=("fast", "full"), default="fast")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup-epochs", type=int, default=1)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--unfreeze", type=int, default=0, choices=range(0, 5),
                   help="also train the last N stages (full mode)")
    t.add_argument("--size", type=int, help="input side (default: the model card's, 224)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=4, help="image decoding threads")
    t.add_argument("--strict", action="store_true", help="fail on unreadable images")
    q = sub.add_parser("predict", help="top-k ids for a folder or list of images")
    q.add_argument("--weights", required=True)
    q.add_argument("--head", required=True)
    q.add_argument("--images", required=True, help="folder or list file")
    q.add_argument("--root")
    q.add_argument("--topk", type=int, default=5)
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--out", help="write `name id1 .. idk` lines here (default stdout)")
    q.add_argument("--threads", type=int, default=4)
    q.add_argument("--strict", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the command line; a bad input exits with ``error: <message>`` (status 1)."""
    a = parser().parse_args(argv)
    try:
        if a.cmd == "train":
            r = train(a.weights, a.list, a.labels, a.root, a.val_list, a.out, a.mode,
                      a.epochs, a.batch_size, a.lr, a.weight_decay, a.warmup_epochs,
                      a.label_smoothing, a.unfreeze, a.size, seed=a.seed,
                      threads=a.threads, strict=a.strict)
            last = r["history"][r["best_epoch"] - 1]
            print(f"saved {a.out}: epoch {r['best_epoch']}, "
                  + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "epoch"))
        else:
            model = load_finetuned(a.weights, a.head)
            paths, ids, _ = predict(model, a.images, a.topk, a.batch_size, a.root,
                                    a.threads, a.strict)
            text = "".join(os.path.basename(pth) + " " + " ".join(map(str, row)) + "\n"
                           for pth, row in zip(paths, ids))
            if a.out:
                atomic_write_text(a.out, text)
            else:
                sys.stdout.write(text)
    except (CheckpointError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
