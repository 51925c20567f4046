"""Few-shot fine-tuning of a ConvNeXt-V2 classifier on a class subset.

The cascade's dog stage: an ImageNet ConvNeXt-V2 backbone, a new head for the
contest's dog ids (244-373 -> 0-129), trained on 4 images per class.

Two modes:
  fast  backbone features of each image are computed once (eval preprocessing,
        no augmentation) and the head is trained on that cache: one backbone
        pass per image in all.
  full  every epoch runs the backbone on freshly augmented crops (random
        resized crop + flip); the head (and, with unfreeze>0, the last
        stage(s)) is trained. Costs one backbone pass per image per epoch,
        plus backward through the unfrozen stages.

Only trained parameters are saved, with the backbone's size and SHA-256, so a
head file is small and cannot be silently paired with other weights.

    python -m jclip.finetune train --weights convnextv2_base.pkl \
        --list train.txt --root data --labels 244-373 --out out/dogs.pkl
    python -m jclip.finetune predict --weights convnextv2_base.pkl \
        --head out/dogs.pkl --images TestSetB --out dogs_top5.txt
"""
import argparse
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

import jittor as jt
from jittor import nn
from tqdm import tqdm

from ..models.batching import run_in_slices
from ..weights.checkpoint import CheckpointError, read_state_dict, save_state_dict
from ..io import sha256_file
from ..models.convnext import load_convnextv2
from ..data.images import imagenet_preprocess, to_rgb

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_PCT = 0.875
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def parse_label_range(text):
    """'244-373' -> (244, 373); '7' -> (7, 7)."""
    lo, _, hi = str(text).partition("-")
    lo, hi = int(lo), int(hi or lo)
    if hi < lo:
        raise ValueError(f"label range {text!r}: end before start")
    return lo, hi


def read_list(list_file, root=None, label_range=None):
    """(paths, labels) from a file of `path label` lines.

    Paths are relative to root (default: the list file's folder). With
    label_range=(lo, hi) only labels in [lo, hi] are kept, remapped to 0..hi-lo.
    """
    root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
    paths, labels = [], []
    with open(list_file) as f:
        for n, line in enumerate(f, 1):
            parts = line.rsplit(None, 1)
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{n}: expected `path label`, got {line!r}")
            label = int(parts[1])
            if label_range is not None:
                if not label_range[0] <= label <= label_range[1]:
                    continue
                label -= label_range[0]
            paths.append(os.path.join(root, parts[0]))
            labels.append(label)
    if not paths:
        raise ValueError(f"{list_file}: no images"
                         + (f" with labels {label_range[0]}-{label_range[1]}"
                            if label_range else ""))
    return paths, np.array(labels, np.int64)


def list_images(folder_or_list, root=None):
    """Image paths of a folder (sorted) or of a list file (first column)."""
    if os.path.isdir(folder_or_list):
        return [os.path.join(folder_or_list, n) for n in sorted(os.listdir(folder_or_list))
                if n.lower().endswith(IMAGE_EXTS)]
    root = os.path.dirname(os.path.abspath(folder_or_list)) if root is None else root
    with open(folder_or_list) as f:
        return [os.path.join(root, line.split()[0]) for line in f if line.strip()]


def _to_array(img):
    x = np.asarray(img, np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def eval_transform(img, size=224):
    """Resize the short side to size/0.875 (bicubic), center-crop size (timm's eval)."""
    return imagenet_preprocess(size, CROP_PCT)(img)


def train_transform(img, rng, size=224, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random resized crop (torchvision's sampling) + horizontal flip."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw + 1), rng.randint(0, h - ch + 1)
            break
    else:  # fall back to a center crop of the whole image
        cw, ch = w, h
        left, top = 0, 0
    img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + cw, top + ch))
    if rng.rand() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_array(img)


def _open(path):
    with Image.open(path) as im:
        img = to_rgb(im)  # also 16-bit and palette-with-alpha images
        return img.copy() if img is im else img  # outlive the closed file


class ImageLoader:
    """Decodes and preprocesses images in batches on a thread pool.

    Unreadable files are reported by name and skipped (strict=True raises).
    Each image's random augmentation comes from its own seed, so results do
    not depend on thread scheduling.
    """

    def __init__(self, threads=4, strict=False):
        self.pool = ThreadPoolExecutor(max(1, threads))
        self.strict = strict
        self.bad = []

    def _one(self, path, fn):
        try:
            return fn(_open(path))
        except (OSError, ValueError) as e:
            if self.strict:
                raise OSError(f"{path}: cannot read image ({e})") from None
            if path not in self.bad:
                self.bad.append(path)
                print(f"warning: skipping unreadable image {path}: {e}", file=sys.stderr)
            return None

    def batches(self, paths, batch_size, transform, seeds=None, desc=None):
        """Yields (array N,3,H,W, indices into paths) per batch."""
        starts = range(0, len(paths), batch_size)
        for s in tqdm(starts, desc=desc, disable=desc is None, leave=False):
            idx = list(range(s, min(s + batch_size, len(paths))))
            if seeds is None:
                fns = [transform] * len(idx)
            else:
                fns = [(lambda im, r=np.random.RandomState(seeds[i]): transform(im, r))
                       for i in idx]
            out = list(self.pool.map(self._one, [paths[i] for i in idx], fns))
            keep = [i for i, o in zip(idx, out) if o is not None]
            if keep:
                yield np.stack([o for o in out if o is not None]), np.array(keep)


# --------------------------------------------------------------------------
# Model split: frozen trunk -> trainable tail -> head
# --------------------------------------------------------------------------

def trainable_prefixes(unfreeze):
    """State-dict prefixes trained with `unfreeze` last stages unfrozen."""
    pre = ["head."]
    if unfreeze > 0:
        pre.append("norm.")
        for s in range(4 - unfreeze, 4):
            pre += [f"stages.{s}.", f"downsample_layers.{s}."]
    return tuple(pre)


def trunk(model, x, unfreeze):
    """Frozen part: input -> activations entering the first trainable stage
    (or pooled features when only the head trains)."""
    first = 4 - unfreeze
    for i in range(first):
        x = model.stages[i](model.downsample_layers[i](x))
    if unfreeze == 0:
        x = model.norm(x.mean((2, 3)))
    return x


def tail(model, x, unfreeze):
    """Trainable part: trunk output -> logits."""
    if unfreeze > 0:
        for i in range(4 - unfreeze, 4):
            x = model.stages[i](model.downsample_layers[i](x))
        x = model.norm(x.mean((2, 3)))
    return model.head(x)


def smooth_ce(logits, labels, eps):
    logp = nn.log_softmax(logits, dim=1)
    nll = -logp.gather(1, labels.reshape(-1, 1)).reshape(-1)
    return ((1 - eps) * nll - eps * logp.mean(1)).mean()


def lr_at(step, total, warmup, base):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * t))


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def _backbone(weights):
    """(model with 1000-way head, name, sha256) from a path."""
    model = load_convnextv2(weights)
    return model, model.name, sha256_file(weights)


def _features(model, loader, paths, size, batch_size, desc):
    feats, kept = [], []
    with jt.no_grad():
        for x, idx in loader.batches(paths, batch_size,
                                     lambda im: eval_transform(im, size), desc=desc):
            feats.append(run_in_slices(lambda v: trunk(model, jt.array(v), 0), x, model.cpu_batch))
            kept.append(idx)
    if not feats:
        raise ValueError("no readable images")
    return np.concatenate(feats), np.concatenate(kept)


def _accuracy(logits, labels):
    return float((np.argmax(logits, 1) == labels).mean())


def train(weights, train_list, labels=None, root=None, val_list=None, out=None,
          mode="fast", epochs=None, batch_size=32, lr=None, weight_decay=0.05,
          warmup_epochs=1, label_smoothing=0.1, unfreeze=0, size=224,
          scale=(0.35, 1.0), seed=0, threads=4, strict=False, verbose=True):
    """Train a head for the classes in `labels` (a (lo, hi) range or 'lo-hi').

    weights: backbone weights file (its SHA-256 is recorded). train_list /
    val_list: `path label` files (val picks the epoch; without it the last
    epoch is kept). mode 'fast' trains on cached features, 'full' on augmented
    images (unfreeze = number of last stages also trained; full mode only).
    Returns a dict: state (trained params), meta, history (per-epoch
    train/val accuracy), best_epoch. Saved to `out` when given.
    """
    if mode not in ("fast", "full"):
        raise ValueError(f"mode must be 'fast' or 'full', not {mode!r}")
    if mode == "fast" and unfreeze:
        raise ValueError("unfreeze needs mode='full' (fast mode caches backbone features)")
    label_range = parse_label_range(labels) if isinstance(labels, str) else labels
    epochs = epochs or (100 if mode == "fast" else 10)
    lr = lr or (1e-3 if mode == "fast" else 5e-4)
    jt.set_global_seed(seed)
    paths, y = read_list(train_list, root, label_range)
    num_classes = (label_range[1] - label_range[0] + 1) if label_range else int(y.max()) + 1
    val = read_list(val_list, root, label_range) if val_list else None

    model, name, sha = _backbone(weights)
    model.reset_head(num_classes)
    prefixes = trainable_prefixes(unfreeze)
    params = [p for k, p in model.state_dict().items() if k.startswith(prefixes)]
    opt = jt.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loader = ImageLoader(threads, strict)
    rng = np.random.RandomState(seed)

    if mode == "fast":
        xf, kept = _features(model, loader, paths, size, batch_size, "train features")
        yf = y[kept]
        if val:
            vf, vk = _features(model, loader, val[0], size, batch_size, "val features")
            vy = val[1][vk]
    steps_per_epoch = math.ceil(len(paths) / batch_size)
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch

    history, best, best_state, step = [], None, None, 0
    bar = tqdm(range(epochs), desc=f"train {mode}", disable=not verbose)
    for epoch in bar:
        model.train()
        order = rng.permutation(len(yf) if mode == "fast" else len(paths))
        correct = seen = 0
        if mode == "fast":
            batches = ((xf[order[s:s + batch_size]], order[s:s + batch_size])
                       for s in range(0, len(order), batch_size))
        else:
            seeds = rng.randint(0, 2 ** 31 - 1, len(paths))
            shuffled = [paths[i] for i in order]
            tf = lambda im, r: train_transform(im, r, size, scale)  # noqa: E731
            batches = ((x, order[idx]) for x, idx in
                       loader.batches(shuffled, batch_size, tf, seeds[order]))
        for x, idx in batches:
            opt.lr = lr_at(step, total, warmup, lr)
            x = jt.array(x)
            if mode == "full":
                with jt.no_grad():
                    x = trunk(model, x, unfreeze)
                x = x.stop_grad()
            logits = tail(model, x, unfreeze)
            loss = smooth_ce(logits, jt.array(y[idx] if mode == "full" else yf[idx]),
                             label_smoothing)
            opt.step(loss)
            target = y[idx] if mode == "full" else yf[idx]
            correct += int((np.argmax(logits.numpy(), 1) == target).sum())
            seen += len(idx)
            step += 1
        rec = {"epoch": epoch + 1, "train_acc": correct / max(seen, 1)}
        if val:
            model.eval()
            if mode == "fast":
                with jt.no_grad():
                    rec["val_acc"] = _accuracy(model.head(jt.array(vf)).numpy(), vy)
            else:
                _, logits, vk = _predict_logits(model, loader, val[0], size, batch_size)
                rec["val_acc"] = _accuracy(logits, val[1][vk])
        history.append(rec)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k != "epoch"})
        # best val accuracy, ties to better train accuracy; no val: last epoch
        score = (rec["val_acc"], rec["train_acc"]) if val else (epoch,)
        if best is None or score > best:
            best, best_epoch = score, epoch + 1
            best_state = {k: v.numpy().copy() for k, v in model.state_dict().items()
                          if k.startswith(prefixes)}
    meta = {"backbone": name or "custom", "backbone_sha256": sha,
            "num_classes": num_classes, "offset": label_range[0] if label_range else 0,
            "unfreeze": unfreeze, "size": size, "mode": mode, "epoch": best_epoch,
            "epochs": epochs, "seed": seed}
    if val:
        meta["val_acc"] = f"{best[0]:.4f}"
    if out:
        save_state_dict(out, best_state, meta)
    if loader.bad:
        print(f"warning: {len(loader.bad)} unreadable image(s) skipped", file=sys.stderr)
    return {"state": best_state, "meta": meta, "history": history, "best_epoch": best_epoch}


# --------------------------------------------------------------------------
# Loading and prediction
# --------------------------------------------------------------------------

def load_finetuned(weights, head):
    """Backbone weights + a head file from train(); checks they belong together."""
    state, meta = read_state_dict(head)
    if "backbone_sha256" not in meta:
        raise CheckpointError(f"{head}: not a jclip fine-tuned head (no backbone_sha256)")
    sha = sha256_file(weights)
    if sha != meta["backbone_sha256"]:
        raise CheckpointError(
            f"{head} was trained on backbone {meta.get('backbone')} with SHA-256 "
            f"{meta['backbone_sha256'][:16]}..., but {weights} has {sha[:16]}...; "
            f"pass the weights it was trained with")
    model = load_convnextv2(weights, num_classes=int(meta["num_classes"]))
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise CheckpointError(f"{head}: keys not in the model: {', '.join(unknown[:10])}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{head}: {k} has shape {v.shape}, model {tuple(own[k].shape)}")
        own[k].assign(jt.array(v.astype(np.float32)))
    model.eval()
    model.offset = int(meta.get("offset", 0))
    model.image_size = int(meta.get("size", 224))
    return model


def _predict_logits(model, loader, paths, size, batch_size, desc=None):
    out, kept = [], []
    model.eval()
    with jt.no_grad():
        for x, idx in loader.batches(paths, batch_size,
                                     lambda im: eval_transform(im, size), desc=desc):
            out.append(run_in_slices(lambda v: model(jt.array(v)), x, model.cpu_batch))
            kept.append(idx)
    if not out:
        raise ValueError("no readable images")
    kept = np.concatenate(kept)
    return [paths[i] for i in kept], np.concatenate(out), kept


def predict(model, images, k=5, batch_size=32, root=None, threads=4, strict=False,
            offset=None, verbose=True):
    """Top-k on a folder, a list file or a list of paths.

    Returns (paths, ids (N, k) with the model's offset added, probs (N, k)).
    """
    paths = list_images(images, root) if isinstance(images, str) else list(images)
    offset = getattr(model, "offset", 0) if offset is None else offset
    size = getattr(model, "image_size", 224)
    loader = ImageLoader(threads, strict)
    kept, logits, _ = _predict_logits(model, loader, paths, size, batch_size,
                                      desc="predict" if verbose else None)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    top = np.argsort(-probs, 1, kind="stable")[:, :k]
    return kept, top + offset, np.take_along_axis(probs, top, 1)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m jclip.finetune",
                                description="Fine-tune / apply a ConvNeXt-V2 head.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a head on a `path label` list")
    t.add_argument("--weights", required=True, help="backbone weights (.pkl or .pt)")
    t.add_argument("--list", required=True, help="training list: `path label` lines")
    t.add_argument("--root", help="folder the list's paths are relative to")
    t.add_argument("--labels", help="label range kept, e.g. 244-373 (ids -> 0..129)")
    t.add_argument("--val-list", help="held-out list used to pick the epoch")
    t.add_argument("--out", required=True, help="head file to write (.pkl)")
    t.add_argument("--mode", choices=("fast", "full"), default="fast")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup-epochs", type=int, default=1)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--unfreeze", type=int, default=0, choices=range(0, 5),
                   help="also train the last N stages (full mode)")
    t.add_argument("--size", type=int, default=224)
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
    a = p.parse_args(argv)
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
            lines = [os.path.basename(pth) + " " + " ".join(map(str, row))
                     for pth, row in zip(paths, ids)]
            if a.out:
                with open(a.out, "w") as f:
                    f.write("\n".join(lines) + "\n")
            else:
                print("\n".join(lines))
    except (CheckpointError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
