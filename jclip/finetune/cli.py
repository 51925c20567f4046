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

from ..commands import (CommandParser, existing_dir, existing_file, existing_path, non_negative_float,
                        non_negative_int, number, positive_float, positive_int, run, seed)
from ..io import atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m jclip.finetune``."""
    p = CommandParser(prog="python -m jclip.finetune",
                                description="Fine-tune / apply a ConvNeXt-V2 head.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a head on a `path label` list")
    t.add_argument("--weights", required=True, type=existing_file, help="ConvNeXt-V2 backbone weights (any format jclip reads: convert.py's .safetensors or .pkl, the official .pt)")
    t.add_argument("--list", required=True, type=existing_file, help="training list: `path label` lines")
    t.add_argument("--root", type=existing_dir, help="folder the list's paths are relative to")
    t.add_argument("--labels", help="label range kept, e.g. 244-373 (ids -> 0..129)")
    t.add_argument("--val-list", type=existing_file, help="held-out list used to pick the epoch")
    t.add_argument("--out", required=True, help="head file to write (.safetensors; .pkl writes Jittor's format)")
    t.add_argument("--mode", choices=("fast", "full"), default="fast")
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--batch-size", type=positive_int, default=32)
    t.add_argument("--lr", type=positive_float)
    t.add_argument("--weight-decay", type=non_negative_float, default=0.05)
    t.add_argument("--warmup-epochs", type=non_negative_int, default=1)
    t.add_argument("--label-smoothing", type=number(min=0, lt=1), default=0.1)
    t.add_argument("--unfreeze", type=int, default=0, choices=range(0, 5),
                   help="also train the last N stages (full mode)")
    t.add_argument("--size", type=positive_int, help="input side (default: the model card's, 224)")
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--threads", type=positive_int, default=4, help="image decoding threads")
    t.add_argument("--strict", action="store_true", help="fail on unreadable images")
    q = sub.add_parser("predict", help="top-k ids for a folder or list of images")
    q.add_argument("--weights", required=True, type=existing_file)
    q.add_argument("--head", required=True, type=existing_file)
    q.add_argument("--images", required=True, type=existing_path, help="folder or list file")
    q.add_argument("--root", type=existing_dir)
    q.add_argument("--topk", type=positive_int, default=5)
    q.add_argument("--batch-size", type=positive_int, default=32)
    q.add_argument("--out", help="write `name id1 .. idk` lines here (default stdout)")
    q.add_argument("--threads", type=positive_int, default=4)
    q.add_argument("--strict", action="store_true")
    return p


# the name an earlier version (and tests/test_docs.py) used
parser = build_parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (jclip.commands: 2 a bad
    option, 1 a failed run, each one ``error: ...`` line)."""
    return run(lambda: _run(build_parser().parse_args(argv)))


def _run(a: argparse.Namespace) -> None:
    from .model import load_finetuned
    from .prediction import predict
    from .training import train
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
