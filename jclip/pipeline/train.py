"""train.sh: fit LP++ on each CLIP backbone, train the ConvNeXt-V2 dog head,
write ``out/manifest.json`` last (built beside the previous heads, swapped in
at the end: manifest.begin / manifest.commit).

The images train.sh uses are the 4-shot list and, from ``val.txt``, the first
``lpp.val_per_class`` images of each class (LP++'s epoch) and the first
``dog_head.val_per_class`` of each dog class (the dog head's epoch);
``selection_images`` names them, and val.sh leaves them out of what it measures.
Under mpirun the ranks share the CLIP encoding; rank 0 alone fits the heads,
trains the dog head and writes every file.
"""
import json
import os
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .. import distributed
from ..data.contest import ContestFormatError, read_classes, read_labelled_list, write_labelled_list
from ..io import sha256_file
from . import manifest as manifest_file
from .backbones import encode_backbones, relative_to, step
from .heads import StageHead, fit_seen, seen_output

Items = List[Tuple[str, int]]


def list_paths(cfg) -> Tuple[str, str]:
    """(4-shot list, validation list) that process.py wrote."""
    lists = cfg.data.lists
    return os.path.join(lists, "train_4shot.txt"), os.path.join(lists, "val.txt")


def per_class(items: Sequence[Tuple[str, int]], k: int) -> Items:
    """The first k items of each class, in list order."""
    seen: Dict[int, int] = {}
    out = []
    for p, y in items:
        if seen.get(y, 0) < k:
            seen[y] = seen.get(y, 0) + 1
            out.append((p, y))
    return out


def selection_images(cfg, val: Items, dog: np.ndarray) -> Tuple[Items, Items]:
    """(LP++'s, the dog head's) validation images: those that chose the epochs.

    dog: (C,) bool, the classes the dog head answers for.
    """
    lpp = per_class(val, cfg.lpp.val_per_class)
    dogs = [(p, y) for p, y in per_class(val, cfg.dog_head.val_per_class) if dog[y]]
    return lpp, dogs


def train(cfg) -> Dict[str, Any]:
    """Train every head of the cascade; returns the manifest it wrote."""
    import jclip  # noqa: F401  (Jittor defaults before jittor)
    from .. import finetune
    from ..models.load import use_device
    from .cascade import class_masks

    times: Dict[str, float] = {}
    t_all = time.time()
    root, out = cfg.data.root, cfg.out_dir
    os.makedirs(out, exist_ok=True)
    names = read_classes(cfg.data.file("classes"))
    shots_path, val_path = list_paths(cfg)
    if not os.path.isfile(shots_path):
        raise ContestFormatError(f"{shots_path}: no 4-shot list; run `python process.py "
                                 f"--root {root} --out {cfg.data.lists}` first")
    shots = read_labelled_list(shots_path, len(names))
    val = read_labelled_list(val_path, len(names)) if os.path.isfile(val_path) else []
    device = use_device(cfg.device)
    print(f"{len(shots)} training images, {len(val)} held out, {len(names)} classes, device {device}")
    manifest: Dict[str, Any] = {
        "config": cfg.to_dict(), "config_file": cfg.path, "device": device,
        "train_4shot": {"path": shots_path, "sha256": sha256_file(shots_path)},
        "val": {"path": val_path, "sha256": sha256_file(val_path) if val else None},
        "backbones": {}, "outputs": {}}
    split_json = os.path.join(cfg.data.lists, "split.json")
    if os.path.isfile(split_json):
        with open(split_json) as f:
            manifest["split"] = json.load(f)
    # every file of this run goes to a staging folder; the previous heads and
    # manifest stay usable until commit swaps the new ones in (manifest.py)
    staging = manifest_file.begin(cfg) if distributed.is_root() else None

    _, dog_mask = class_masks(len(names), len(names), cfg.cascade.dog_range)
    lpp_val, dog_val = selection_images(cfg, val, dog_mask)
    y_shots = np.array([y for _, y in shots])
    y_val = np.array([y for _, y in lpp_val], dtype=np.int64)
    n = len(shots)
    keys = sorted(set(cfg.cascade.lpp_mix))
    # shots + LP++'s validation images as one group: val.sh reads the same cache file back
    enc = encode_backbones(cfg, keys, [relative_to(root, shots + lpp_val)], device, [names],
                           times=times)
    keep, vkeep = enc.readable[:n], enc.readable[n:]
    missing = sorted(set(range(len(names))) - set(y_shots[keep]))
    if missing:
        raise ContestFormatError(f"{shots_path}: no readable image for classes {missing[:5]}")
    for key in keys:
        spec, feats = cfg.backbones[key], enc.features[key]
        seen = StageHead.of(cfg.stages.seen)
        label = f"LP++ ({cfg.lpp.epochs} epochs)" if seen.head == "lpp" else seen.describe()
        with step(f"{key}: {label}", times):
            head = fit_seen(cfg, feats[:n][keep], y_shots[keep], enc.texts[key][0],
                            feats[n:][vkeep], y_val[vkeep])
            path = os.path.join(staging, f"{seen_output(cfg, key)}.npz")
            head.save(path)
        acc = getattr(head, "val_accuracy_", None)
        print(f"    {'LP++' if seen.head == 'lpp' else seen.describe()} {spec.model}: validation accuracy "
              + (f"{acc:.4f} on {int(vkeep.sum())} images" if acc is not None else "n/a (no validation list)"))
        manifest["backbones"][key] = {"model": spec.model, "weights": spec.weights,
                                      "source_sha256": enc.sha256[key]}
        manifest["seen_head"] = seen.to_json()
        manifest["outputs"][seen_output(cfg, key)] = manifest_file.output_entry(
            path, val_accuracy=acc, best_epoch=getattr(head, "best_epoch_", None))

    dog = cfg.dog_head
    lo, hi = cfg.cascade.dog_range
    dog_val_path = os.path.join(staging, "val_dogs.txt") if dog_val else None
    if dog_val:
        write_labelled_list(dog_val_path, dog_val)
    head_path = os.path.join(staging, "dog_head.safetensors")
    with step(f"dog head: ConvNeXt-V2 {dog.mode} training, {dog.epochs} epochs", times):
        r = finetune.train(dog.weights, shots_path, labels=(lo, hi), root=root,
                           val_list=dog_val_path, out=head_path, mode=dog.mode,
                           epochs=dog.epochs, batch_size=dog.batch_size, lr=dog.lr,
                           size=dog.size, seed=dog.seed, cache_dir=cfg.cache_dir)
    print(f"    dog head: epoch {r['best_epoch']}, validation accuracy {r['meta'].get('val_acc', 'n/a')}")
    manifest["backbones"]["dog"] = {"model": dog.model, "weights": dog.weights,
                                    "sha256": r["meta"]["backbone_sha256"]}
    manifest["outputs"]["dog_head"] = manifest_file.output_entry(
        head_path, val_accuracy=r["meta"].get("val_acc"), best_epoch=r["best_epoch"])
    manifest["times_s"] = times
    manifest["total_s"] = round(time.time() - t_all, 2)
    written = manifest_file.commit(cfg, manifest, staging)
    print(f"trained in {manifest['total_s']:.1f} s; wrote {written}")
    return manifest
