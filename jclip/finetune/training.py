"""Few-shot fine-tuning of a ConvNeXt-V2 classifier on a class subset: the
loss, the learning-rate schedule and the training loop.

Two modes:
  fast  backbone features of each image are computed once (eval preprocessing,
        no augmentation) and the head is trained on that cache: one backbone
        pass per image in all.
  full  every epoch runs the backbone on freshly augmented crops (random
        resized crop + flip); the head (and, with unfreeze>0, the last
        stage(s)) is trained.  Costs one backbone pass per image per epoch,
        plus backward through the unfrozen stages.
"""
import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jittor as jt
import numpy as np
from jittor import nn

from ..data.images import Preprocess
from ..metrics import topk_accuracy
from ..models.batching import run_in_slices
from ..models.convnext import ConvNeXtV2
from ..progress import progress
from ..weights.checkpoint import save_state_dict
from .data import LabelRange, eval_transform, image_batches, parse_label_range, read_list, train_transform
from .model import load_backbone, tail, trainable_prefixes, trunk
from .prediction import predict_logits


def smooth_ce(logits: jt.Var, labels: jt.Var, eps: float) -> jt.Var:
    """Cross-entropy with label smoothing ``eps`` (mean over the batch)."""
    logp = nn.log_softmax(logits, dim=1)
    nll = -logp.gather(1, labels.reshape(-1, 1)).reshape(-1)
    return ((1 - eps) * nll - eps * logp.mean(1)).mean()


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * t))


def backbone_features(model: ConvNeXtV2, paths: Sequence[str], transform: Preprocess,
                      batch_size: int, bad: List[str], threads: int, strict: bool,
                      desc: str, cache: Optional[Dict[str, str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(pooled features of the readable images, their indices into ``paths``).

    ``cache`` ({"dir", "sha256" of the backbone file}) keeps the features in jclip's
    feature cache (keyed by backbone file and preprocessing), so a retrain with
    other head settings does not encode the images again; an unreadable image
    is cached as a zero row and reported again on every run.
    """
    if cache is not None:
        from ..features.cache import encode_images_cached

        def encode(chunk):
            feats, kept = _encode_batches(model, chunk, transform, batch_size, bad, threads, strict, None)
            out = np.zeros((len(chunk), model.num_features), np.float32)
            out[kept] = feats
            return out

        rows = encode_images_cached(paths, encode, f"convnextv2-{model.name}", cache["sha256"],
                                    transform.id, cache["dir"], batch_size=batch_size,
                                    progress=desc is not None)
        readable = rows.any(axis=1)
        for i in np.flatnonzero(~readable):
            if paths[i] not in bad:
                bad.append(paths[i])
                print(f"warning: skipping unreadable image: {paths[i]}", file=sys.stderr)
        if not readable.any():
            raise ValueError("no readable images")
        return rows[readable], np.flatnonzero(readable)
    feats, kept = _encode_batches(model, paths, transform, batch_size, bad, threads, strict, desc)
    if not len(kept):
        raise ValueError("no readable images")
    return feats, kept


def _encode_batches(model, paths, transform, batch_size, bad, threads, strict, desc):
    """(features, indices into ``paths``) of the readable images, batch by batch."""
    feats, kept = [], []
    with jt.no_grad():
        for x, idx in image_batches(paths, batch_size, transform, bad, threads, strict, desc=desc):
            feats.append(run_in_slices(lambda v: trunk(model, jt.array(v), 0), x, model.cpu_batch))
            kept.append(idx)
    if not feats:
        return np.zeros((0, model.num_features), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(kept)


def train(weights: str, train_list: str, labels: Union[None, str, LabelRange] = None,
          root: Optional[str] = None, val_list: Optional[str] = None, out: Optional[str] = None,
          mode: str = "fast", epochs: Optional[int] = None, batch_size: int = 32,
          lr: Optional[float] = None, weight_decay: float = 0.05, warmup_epochs: int = 1,
          label_smoothing: float = 0.1, unfreeze: int = 0, size: Optional[int] = None,
          scale: Tuple[float, float] = (0.35, 1.0), seed: int = 0, threads: int = 4,
          strict: bool = False, verbose: bool = True,
          cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """Train a head for the classes in ``labels`` (a (lo, hi) range or 'lo-hi').

    Parameters:
        weights: backbone weights file (its SHA-256 is recorded).
        train_list / val_list: `path label` files, paths relative to ``root``
            (default: the list's folder); val picks the epoch, without it the
            last epoch is kept.
        labels: contest ids kept, remapped to 0..hi-lo (None: all, as they are).
        out: head file to write (atomically); None writes nothing.
        mode: 'fast' trains on cached features, 'full' on augmented images
            (``unfreeze`` = number of last stages also trained; full mode only).
        epochs / lr: default 100 / 1e-3 (fast), 10 / 5e-4 (full).
        size: input side (default: the ConvNeXt-V2 card's input size).
        seed: Jittor's and the shuffling/augmentation seed: same seed, same head.
        cache_dir: fast mode keeps the backbone features in this feature cache
            (a retrain with other head settings skips the encoding).
    Returns: a dict with ``state`` (trained params), ``meta``, ``history``
    (per-epoch train/val accuracy) and ``best_epoch``.
    """
    if mode not in ("fast", "full"):
        raise ValueError(f"mode must be 'fast' or 'full', not {mode!r}")
    if mode == "fast" and unfreeze:
        raise ValueError("unfreeze needs mode='full' (fast mode caches backbone features)")
    label_range = parse_label_range(labels) if isinstance(labels, str) else labels
    epochs = epochs or (100 if mode == "fast" else 10)
    lr = lr or (1e-3 if mode == "fast" else 5e-4)
    evaluate = eval_transform(size)
    size = evaluate.size
    jt.set_global_seed(seed)
    paths, y = read_list(train_list, root, label_range)
    num_classes = (label_range[1] - label_range[0] + 1) if label_range else int(y.max()) + 1
    val = read_list(val_list, root, label_range) if val_list else None

    model, name, sha = load_backbone(weights)
    model.reset_head(num_classes)
    prefixes = trainable_prefixes(unfreeze)
    params = [p for k, p in model.state_dict().items() if k.startswith(prefixes)]
    opt = jt.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    bad: List[str] = []
    rng = np.random.RandomState(seed)

    if mode == "fast":
        cache = {"dir": cache_dir, "sha256": sha} if cache_dir else None
        xf, kept = backbone_features(model, paths, evaluate, batch_size, bad, threads, strict,
                                     "train features", cache)
        yf = y[kept]
        if val:
            vf, vk = backbone_features(model, val[0], evaluate, batch_size, bad, threads, strict,
                                       "val features", cache)
            vy = val[1][vk]
    else:
        augment = train_transform(size, scale)
    steps_per_epoch = math.ceil(len(paths) / batch_size)
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch

    history, best, best_state, step = [], None, None, 0
    bar = progress(range(epochs), desc=f"train {mode}", unit="epoch", enabled=verbose)
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
            batches = ((x, order[idx]) for x, idx in
                       image_batches(shuffled, batch_size, augment, bad, threads, strict, seeds[order]))
        for x, idx in batches:
            opt.lr = lr_at(step, total, warmup, lr)
            x = jt.array(x)
            if mode == "full":
                with jt.no_grad():
                    x = trunk(model, x, unfreeze)
                x = x.stop_grad()
            target = y[idx] if mode == "full" else yf[idx]
            logits = tail(model, x, unfreeze)
            opt.step(smooth_ce(logits, jt.array(target), label_smoothing))
            correct += int((np.argmax(logits.numpy(), 1) == target).sum())
            seen += len(idx)
            step += 1
        rec = {"epoch": epoch + 1, "train_acc": correct / max(seen, 1)}
        if val:
            model.eval()
            if mode == "fast":
                with jt.no_grad():
                    rec["val_acc"] = topk_accuracy(model.head(jt.array(vf)).numpy(), vy)
            else:
                _, logits, vk = predict_logits(model, val[0], evaluate, batch_size, bad, threads, strict)
                rec["val_acc"] = topk_accuracy(logits, val[1][vk])
        history.append(rec)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k != "epoch"})
        # best val accuracy, ties to better train accuracy; no val: last epoch
        score = (rec["val_acc"], rec["train_acc"]) if val else (epoch,)
        if best is None or score > best:
            best, best_epoch = score, epoch + 1
            best_state = {k: v.numpy().copy() for k, v in model.state_dict().items()
                          if k.startswith(prefixes)}
    bar.close()
    meta = {"backbone": name or "custom", "backbone_sha256": sha,
            "num_classes": num_classes, "offset": label_range[0] if label_range else 0,
            "unfreeze": unfreeze, "size": size, "mode": mode, "epoch": best_epoch,
            "epochs": epochs, "seed": seed}
    if val:
        meta["val_acc"] = f"{best[0]:.4f}"
    if out:
        save_state_dict(out, best_state, meta)
    if bad:
        print(f"warning: {len(bad)} unreadable image(s) skipped", file=sys.stderr)
    return {"state": best_state, "meta": meta, "history": history, "best_epoch": best_epoch}
