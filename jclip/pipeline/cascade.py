"""The contest cascade: train the heads (train.sh) and write result.txt (test.sh).

    python -m jclip.cascade train [--config configs/cascade.json] [--set lpp.epochs=50]
    python -m jclip.cascade test  [--images DIR] [--classes classes_b.txt] [--result result.txt]

Stages at test time (SPEC section 2, settings in the configuration file):
  1. InMaP over all classes on each CLIP backbone, logits mixed (0.5/0.5);
     top-1 unseen (id >= 374) -> InMaP's top-5.
  2. else LP++ over the seen classes, logits mixed (0.6/0.4);
     top-1 not a dog (outside 244-373) -> LP++'s top-5.
  3. else the ConvNeXt-V2 dog head's top-5 (+244).
Each test image is decoded and encoded once per backbone; InMaP and LP++ share
those features.  A test image that cannot be decoded still gets a line: the
five classes the cascade chose most often as top-1 on the other images (the
best guess of the test set's class prior; ties to the lower id).
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

from ..data.contest import ContestFormatError, check_result, format_result, list_test_images, read_classes, read_labelled_list, write_labelled_list
from ..io import atomic_write_text, sha256_file

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.json")


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

def load_config(path=None, overrides=()):
    """The JSON configuration with ``key.sub=value`` overrides (value parsed as
    JSON when it parses, else kept as a string)."""
    path = path or DEFAULT_CONFIG
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise ContestFormatError(f"{path}: cannot read configuration ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ContestFormatError(f"{path}: not valid JSON ({e})") from None
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ContestFormatError(f"--set {item!r}: expected key=value")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        node, parts = cfg, key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ContestFormatError(f"--set {key}: {p!r} is not a section of {path}")
            node = node[p]
        if parts[-1] not in node:
            raise ContestFormatError(f"--set {key}: no such setting in {path}")
        node[parts[-1]] = value
    cfg["_path"] = os.path.abspath(path)
    casc = cfg["cascade"]
    for mix in ("inmap_mix", "lpp_mix"):
        unknown = set(casc[mix]) - set(cfg["backbones"])
        if unknown:
            raise ContestFormatError(f"{path}: cascade.{mix} names unknown backbones {sorted(unknown)}")
    return cfg


def data_path(cfg, key):
    return os.path.join(cfg["data"]["root"], cfg["data"][key])


@contextlib.contextmanager
def step(name, times):
    """Print a step's start and its time; record the time in ``times``."""
    print(f"==> {name}", flush=True)
    t0 = time.time()
    yield
    times[name] = round(time.time() - t0, 2)
    print(f"    {name}: {times[name]:.1f} s", flush=True)


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------

def load_backbone(spec, device):
    import jclip
    model, preprocess = jclip.load(spec["weights"], device=device)
    return model, preprocess


def encode_files(model, preprocess, paths, spec, cfg, desc):
    """(features (N, D), readable mask) for ``paths``, through the feature cache.

    An unreadable file gets a zero row (cached like any other), so a re-run
    knows it is bad without decoding it again.
    """
    from ..models.load import weights_sha256
    from ..features.encode import encode_image_files
    from ..features.cache import encode_images_cached
    bs = int(cfg["batch_size"])

    def encoder(chunk):
        f, ok, errors = encode_image_files(model, chunk, preprocess, bs, cfg["workers"],
                                           progress=False)
        out = np.zeros((len(chunk), model.text_projection.shape[1]), np.float32)
        out[ok] = f
        return out

    if cfg.get("cache_dir"):
        # chunks of several batches keep the loader's decode-ahead busy
        feats = encode_images_cached(paths, encoder, spec["model"], weights_sha256(model),
                                     preprocess.id, cfg["cache_dir"], batch_size=bs * 8)
    else:
        feats = encoder(paths)
    good = np.linalg.norm(feats, axis=1) > 0.5
    for i in np.flatnonzero(~good):
        print(f"warning: {paths[i]}: unreadable image", file=sys.stderr)
    print(f"    {desc}: {int(good.sum())} of {len(paths)} images encoded", flush=True)
    return feats, good


def text_weights(model, names, spec, cfg, templates=None):
    """(C, D) zero-shot class weights from the templates (default the
    configuration's), prompts cached."""
    from ..models.load import weights_sha256
    from ..features.encode import encode_texts
    from ..features.cache import cached_text_encoder
    from ..heads import text_classifier_weights
    enc = lambda texts: encode_texts(model, texts)  # noqa: E731
    if cfg.get("cache_dir"):
        enc = cached_text_encoder(enc, spec["model"], weights_sha256(model), cfg["cache_dir"],
                                  progress=False)
    return text_classifier_weights(names, enc, templates or cfg["templates"], cfg["domain_suffix"])


def per_class(items, k):
    """The first k items of each class, in list order."""
    seen, out = {}, []
    for p, y in items:
        if seen.get(y, 0) < k:
            seen[y] = seen.get(y, 0) + 1
            out.append((p, y))
    return out


# --------------------------------------------------------------------------
# Training (train.sh)
# --------------------------------------------------------------------------

def train(cfg):
    import jclip  # noqa: F401  (Jittor defaults before jittor)
    from ..models.load import use_device, weights_sha256
    from ..heads import LPPlusPlus
    from ..finetune import train as finetune

    times, t_all = {}, time.time()
    root, out = cfg["data"]["root"], cfg["out_dir"]
    os.makedirs(out, exist_ok=True)
    names = read_classes(data_path(cfg, "classes"))
    lists = cfg["data"]["lists"]
    shots_path, val_path = os.path.join(lists, "train_4shot.txt"), os.path.join(lists, "val.txt")
    if not os.path.isfile(shots_path):
        raise ContestFormatError(f"{shots_path}: no 4-shot list; run `python process.py "
                                 f"--root {root} --out {lists}` first")
    shots = read_labelled_list(shots_path, len(names))
    val = read_labelled_list(val_path, len(names)) if os.path.isfile(val_path) else []
    device = use_device(cfg["device"])
    print(f"{len(shots)} training images, {len(val)} held out, {len(names)} classes, device {device}")
    manifest = {"config": {k: v for k, v in cfg.items() if k != "_path"},
                "config_file": cfg["_path"], "device": device,
                "train_4shot": {"path": shots_path, "sha256": sha256_file(shots_path)},
                "val": {"path": val_path, "sha256": sha256_file(val_path) if val else None},
                "backbones": {}, "outputs": {}}
    split_json = os.path.join(lists, "split.json")
    if os.path.isfile(split_json):
        with open(split_json) as f:
            manifest["split"] = json.load(f)

    lcfg = cfg["lpp"]
    lpp_val = per_class(val, int(lcfg["val_per_class"]))
    y_shots = np.array([y for _, y in shots])
    y_val = np.array([y for _, y in lpp_val], dtype=np.int64)
    for key in sorted(set(cfg["cascade"]["lpp_mix"])):
        spec = cfg["backbones"][key]
        with step(f"{key}: load {spec['weights']}", times):
            model, pre = load_backbone(spec, device)
        with step(f"{key}: encode {len(shots)} shots + {len(lpp_val)} validation images", times):
            paths = [os.path.join(root, p) for p, _ in shots + lpp_val]
            feats, good = encode_files(model, pre, paths, spec, cfg, key)
        with step(f"{key}: text weights for {len(names)} classes", times):
            t = text_weights(model, names, spec, cfg)
        n = len(shots)
        keep, vkeep = good[:n], good[n:]
        missing = sorted(set(range(len(names))) - set(y_shots[keep]))
        if missing:
            raise ContestFormatError(f"{shots_path}: no readable image for classes {missing[:5]}")
        with step(f"{key}: LP++ ({lcfg['epochs']} epochs)", times):
            head = LPPlusPlus(epochs=lcfg["epochs"], momentum=lcfg["momentum"],
                              alpha_every=lcfg["alpha_every"], alpha_scale=lcfg["alpha_scale"],
                              seed=lcfg["seed"])
            vx = feats[n:][vkeep] if vkeep.any() else None
            head.fit(feats[:n][keep], y_shots[keep], t, vx, y_val[vkeep] if vx is not None else None)
            path = os.path.join(out, f"lpp_{key}.npz")
            head.save(path)
        acc = getattr(head, "val_accuracy_", None)
        print(f"    LP++ {spec['model']}: validation accuracy "
              + (f"{acc:.4f} on {int(vkeep.sum())} images" if acc is not None else "n/a (no validation list)"))
        manifest["backbones"][key] = {"model": spec["model"], "weights": spec["weights"],
                                      "source_sha256": weights_sha256(model)}
        manifest["outputs"][f"lpp_{key}"] = {"path": path, "sha256": sha256_file(path),
                                             "val_accuracy": acc,
                                             "best_epoch": getattr(head, "best_epoch_", None)}
        del model
        import jittor as jt
        jt.gc()

    dog = cfg["dog_head"]
    lo, hi = cfg["cascade"]["dog_range"]
    dog_val = [(p, y) for p, y in per_class(val, int(dog["val_per_class"])) if lo <= y <= hi]
    dog_val_path = os.path.join(out, "val_dogs.txt") if dog_val else None
    if dog_val:
        write_labelled_list(dog_val_path, dog_val)
    head_path = os.path.join(out, "dog_head.pkl")
    with step(f"dog head: ConvNeXt-V2 {dog['mode']} training, {dog['epochs']} epochs", times):
        r = finetune.train(dog["weights"], shots_path, labels=(lo, hi), root=root,
                           val_list=dog_val_path, out=head_path, mode=dog["mode"],
                           epochs=dog["epochs"], batch_size=dog["batch_size"], lr=dog["lr"],
                           size=dog["size"], seed=dog["seed"])
    print(f"    dog head: epoch {r['best_epoch']}, validation accuracy {r['meta'].get('val_acc', 'n/a')}")
    manifest["backbones"]["dog"] = {"model": dog["model"], "weights": dog["weights"],
                                    "sha256": r["meta"]["backbone_sha256"]}
    manifest["outputs"]["dog_head"] = {"path": head_path, "sha256": sha256_file(head_path),
                                       "val_accuracy": r["meta"].get("val_acc"),
                                       "best_epoch": r["best_epoch"]}
    manifest["times_s"] = times
    manifest["total_s"] = round(time.time() - t_all, 2)
    atomic_write_text(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=1) + "\n")
    print(f"trained in {manifest['total_s']:.1f} s; wrote {os.path.join(out, 'manifest.json')}")
    return manifest


# --------------------------------------------------------------------------
# Test (test.sh)
# --------------------------------------------------------------------------

def read_manifest(cfg):
    path = os.path.join(cfg["out_dir"], "manifest.json")
    if not os.path.isfile(path):
        raise ContestFormatError(f"{path}: no trained heads; run train.sh first")
    with open(path) as f:
        return json.load(f)


def fallback_ids(top1, num_classes, k):
    """The k most frequent top-1 ids (ties to the lower id), padded with the
    lowest unused ids."""
    counts = np.bincount(np.asarray(top1, np.int64), minlength=num_classes)
    order = [int(i) for i in np.lexsort((np.arange(num_classes), -counts)) if counts[i] > 0][:k]
    return order + [i for i in range(num_classes) if i not in order][:k - len(order)]


def class_masks(num_inmap, num_lpp, unseen_from, dog_range):
    """(unseen (num_inmap,), dog (num_lpp,)) boolean masks of the routing rules:
    InMaP answers when its top-1 is an unseen class, the dog head when LP++'s
    top-1 is a dog class."""
    unseen = np.arange(num_inmap) >= int(unseen_from)
    ids = np.arange(num_lpp)
    return unseen, (ids >= int(dog_range[0])) & (ids <= int(dog_range[1]))


def route(inmap_logits, lpp_logits, unseen, dog, k):
    """(ids (N, k), stage per row: 'inmap' | 'lpp' | 'dog' (ids still to fill)).

    ``unseen`` and ``dog`` are boolean masks over InMaP's and LP++'s classes
    (class_masks); LP++ logits of classes it cannot answer may be -inf.
    """
    from ..heads import topk_ids
    top_i = topk_ids(inmap_logits, k)
    top_l = topk_ids(lpp_logits, k)
    stage = np.where(np.asarray(unseen)[top_i[:, 0]], "inmap",
                     np.where(np.asarray(dog)[top_l[:, 0]], "dog", "lpp")).astype(object)
    ids = np.where((stage == "inmap")[:, None], top_i, top_l)
    return ids, stage


def write_result(path, rows, folder, num_classes, k):
    """Validate and write result.txt atomically: temp file, check, rename."""
    atomic_write_text(path, format_result(rows, num_classes, k),
                      check=lambda tmp: check_result(tmp, folder, num_classes, k))


TRAIN_SETTINGS = ("backbones", "templates", "domain_suffix", "lpp", "dog_head")


def check_trained_with(cfg, manifest):
    """The settings that shape the trained heads must be those train.sh used."""
    trained = manifest.get("config", {})
    for key in TRAIN_SETTINGS:
        if key in trained and trained[key] != cfg[key]:
            raise ContestFormatError(
                f"{cfg['_path']}: `{key}` differs from the one the heads in {cfg['out_dir']} "
                f"were trained with ({json.dumps(trained[key])[:80]}); run train.sh with this "
                f"configuration first")


def encode_backbones(cfg, keys, path_groups, device, name_lists=(), manifest=None, times=None,
                     templates=None):
    """Per CLIP backbone: features of the images in ``path_groups`` (lists of
    paths, concatenated) and class weights of each name list (with each
    template set of ``templates``, default the configuration's).

    Each backbone is loaded once and each image decoded and encoded once; the
    feature cache keeps one file per group, so a group another command
    encoded before (train.sh's shots) is read back.  With ``manifest``, a
    backbone that has an LP++ head must be the weights the head was trained
    with.  Returns (feats {key: (N, D)}, readable (N,) mask, texts {key:
    [(C, D) per name list and template set]}).
    """
    from ..models.load import weights_sha256
    times = {} if times is None else times
    n = sum(len(g) for g in path_groups)
    feats, texts, good = {}, {}, np.ones(n, bool)
    for key in keys:
        spec = cfg["backbones"][key]
        with step(f"{key}: load {spec['weights']}", times):
            model, pre = load_backbone(spec, device)
        if manifest is not None and key in cfg["cascade"]["lpp_mix"]:
            trained = manifest["backbones"].get(key, {}).get("source_sha256")
            if trained != weights_sha256(model):
                raise ContestFormatError(f"{spec['weights']}: not the weights LP++ on {key} was "
                                         f"trained with (manifest {str(trained)[:12]}...); run train.sh again")
        with step(f"{key}: encode {n} images", times):
            parts = [encode_files(model, pre, g, spec, cfg, key) for g in path_groups if g]
            feats[key] = np.concatenate([f for f, _ in parts])
            good &= np.concatenate([ok for _, ok in parts])
        if name_lists:
            sets = templates or [cfg["templates"]]
            with step(f"{key}: text weights for {' + '.join(str(len(n)) for n in name_lists)} "
                      f"classes x {len(sets)} template set(s)", times):
                texts[key] = [text_weights(model, names, spec, cfg, t)
                              for names in name_lists for t in sets]
        del model
        import jittor as jt
        jt.gc()
    return feats, good, texts


def inmap_head(icfg):
    from ..heads import InMaP
    return InMaP(lr=icfg["lr"], iters=icfg["iters"], iters_sinkhorn=icfg["iters_sinkhorn"],
                 tau_t=icfg["tau_t"], tau_i=icfg["tau_i"], alpha=icfg["alpha"], gamma=icfg["gamma"])


def inmap_logits(icfg, feats, text):
    """InMaP fitted transductively on ``feats`` (all the images it will label)."""
    return inmap_head(icfg).fit(feats, text, progress=True).logits(feats)


def lpp_logits(manifest, key, feats):
    from ..heads import LPPlusPlus
    return LPPlusPlus().load(manifest["outputs"][f"lpp_{key}"]["path"]).logits(feats)


def mixed(logits, mix):
    """Logits of the backbones in ``mix`` ({key: weight}) summed with those weights."""
    from ..heads import combine
    return combine([logits[b] for b in mix], list(mix.values()))


def load_dog_head(cfg, manifest):
    from ..finetune import train as finetune
    return finetune.load_finetuned(cfg["dog_head"]["weights"], manifest["outputs"]["dog_head"]["path"])


def dog_topk(cfg, model, paths, k, verbose=True):
    """{path: top-k ids} from the dog head, for the paths it can read."""
    from ..finetune import train as finetune
    kept, top, _ = finetune.predict(model, list(paths), k=k, batch_size=cfg["dog_head"]["batch_size"],
                                    verbose=verbose)
    return dict(zip(kept, top))


def test(cfg, images=None, classes=None, result="result.txt"):
    import jclip  # noqa: F401
    from ..models.load import use_device

    times, t_all = {}, time.time()
    casc, k = cfg["cascade"], int(cfg["cascade"]["topk"])
    images = images or data_path(cfg, "test_images")
    classes = classes or data_path(cfg, "test_classes")
    names = read_classes(classes)
    seen = read_classes(data_path(cfg, "classes"))
    n_seen = int(casc["unseen_from"])
    if names[:n_seen] != seen[:n_seen] or len(seen) != n_seen:
        raise ContestFormatError(f"{classes}: its first {n_seen} classes must be the "
                                 f"{len(seen)} training classes of {data_path(cfg, 'classes')}, in order")
    manifest = read_manifest(cfg)
    check_trained_with(cfg, manifest)
    files = list_test_images(images)
    paths = [os.path.join(images, f) for f in files]
    device = use_device(cfg["device"])
    print(f"{len(files)} test images in {images}, {len(names)} classes "
          f"({len(names) - n_seen} unseen), device {device}")

    backbones = sorted(set(casc["inmap_mix"]) | set(casc["lpp_mix"]))
    feats, good, texts = encode_backbones(cfg, backbones, [paths], device, [names], manifest, times)
    idx = np.flatnonzero(good)
    if idx.size == 0:
        raise ContestFormatError(f"{images}: no test image could be decoded")
    feats = {key: f[idx] for key, f in feats.items()}
    with step(f"InMaP on {idx.size} images x {len(names)} classes", times):
        mix_i = mixed({key: inmap_logits(cfg["inmap"], feats[key], texts[key][0])
                       for key in casc["inmap_mix"]}, casc["inmap_mix"])
    with step("LP++ on the seen classes", times):
        mix_l = mixed({key: lpp_logits(manifest, key, feats[key]) for key in casc["lpp_mix"]},
                      casc["lpp_mix"])
    ids, stage = route(mix_i, mix_l, *class_masks(len(names), n_seen, n_seen, casc["dog_range"]), k)

    dog_rows = np.flatnonzero(stage == "dog")
    if dog_rows.size:
        with step(f"dog head on {dog_rows.size} images", times):
            dog_paths = [paths[idx[i]] for i in dog_rows]
            by_path = dog_topk(cfg, load_dog_head(cfg, manifest), dog_paths, k)
            for i, p in zip(dog_rows, dog_paths):
                if p in by_path:
                    ids[i] = by_path[p]
                else:   # ConvNeXt could not read what CLIP could: keep LP++'s answer
                    stage[i] = "lpp-fallback"

    fb = fallback_ids(ids[:, 0], len(names), k)
    rows, stages = [], {}
    for j, f in enumerate(files):
        stages[f] = "unreadable"
    for i, j in enumerate(idx):
        rows.append((files[j], ids[i]))
        stages[files[j]] = stage[i]
    for j in np.flatnonzero(~good):
        rows.append((files[j], fb))
    with step(f"write {result}", times):
        write_result(result, rows, images, len(names), k)
        stage_file = os.path.join(cfg["out_dir"], "stages.txt")
        atomic_write_text(stage_file, "".join(f"{f} {stages[f]}\n" for f in files))
    counts = {s: sum(v == s for v in stages.values())
              for s in ("inmap", "lpp", "dog", "lpp-fallback", "unreadable")}
    print("decided by: " + ", ".join(f"{s} {n}" for s, n in counts.items() if n or s in ("inmap", "lpp", "dog")))
    total = time.time() - t_all
    print(f"wrote {result}: {len(files)} lines in {total:.1f} s "
          f"({len(files) / total:.1f} images/s); per-image stages in {stage_file}")
    return {"counts": counts, "times_s": times, "total_s": total}


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m jclip.cascade", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "test"):
        s = sub.add_parser(name)
        s.add_argument("--config", default=DEFAULT_CONFIG, help="configuration JSON")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set lpp.epochs=100 (repeatable)")
        if name == "test":
            s.add_argument("--images", help="test folder (default DATA_ROOT/TestSetB)")
            s.add_argument("--classes", help="class list (default DATA_ROOT/classes_b.txt)")
            s.add_argument("--result", default="result.txt", help="output file")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
        if a.cmd == "train":
            train(cfg)
        else:
            test(cfg, a.images, a.classes, a.result)
    except (ContestFormatError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
