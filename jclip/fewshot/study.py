"""Few-shot benchmark on any image-folder dataset: one command for zero-shot,
linear probe, Tip-Adapter(-F), LP++, CoOp and CoCoOp over shots and seeds.

    python -m jclip.fewshot --data flowers/ --model ViT-B/32 --shots 1 5 16 \\
        --seeds 1 2 3 --methods zeroshot tip_adapter coop --output runs/flowers

Datasets: ``--data ROOT`` (``ROOT/<class>/<image>``, a seeded per-class
test split is held out), or ``--train`` and ``--test``, each a folder like
ROOT or a text file of ``path label`` lines (relative paths are read from the
list's folder; labels are class names, or integers named by ``--class-names``).

Shots are sampled per class from a seeded permutation, so the 1-shot set is
inside the 5-shot set for the same seed.  A validation split for the heads
that choose hyper-parameters (linear probe C, Tip-Adapter beta/alpha, LP++
and Tip-Adapter-F epochs) is the next min(shots, 4) images per class of the
same permutation - always from the train split, never the test set.
Image and prompt features are cached (jclip.features), so a second run with
other methods or seeds encodes nothing.

Base-to-new (``--base-to-new``): the first half of the sorted classes is
"base", the rest "new"; methods train on base shots and are scored on base
test images among base classes and on new test images among new classes,
with the harmonic mean H.  Heads with per-class parameters (linear probe,
Tip-Adapter, LP++) cannot score unseen classes: their "new" is left empty.
"""
import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

METHODS = ("zeroshot", "linear_probe", "tip_adapter", "tip_adapter_f", "lpp", "coop", "cocoop")
LABELS = {"zeroshot": "Zero-shot", "linear_probe": "Linear probe", "tip_adapter": "Tip-Adapter",
          "tip_adapter_f": "Tip-Adapter-F", "lpp": "LP++", "coop": "CoOp", "cocoop": "CoCoOp"}
TRANSFERS = {"zeroshot", "coop", "cocoop"}          # can score classes never trained on
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    pass


@dataclass
class Dataset:
    class_names: list
    train_paths: list
    train_labels: np.ndarray
    test_paths: list
    test_labels: np.ndarray

    def describe(self):
        return (f"{len(self.class_names)} classes, {len(self.train_paths)} train / "
                f"{len(self.test_paths)} test images")


# ------------------------------------------------------------------ datasets

def read_folder(root):
    """(paths, class names per path) from ``root/<class>/<image>``."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: not a folder")
    paths, names = [], []
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                     and not d.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    empty = []
    for c in classes:
        files = sorted(f for f in os.listdir(os.path.join(root, c))
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not files:
            empty.append(c)
        paths += [os.path.join(root, c, f) for f in files]
        names += [c] * len(files)
    if empty:
        raise DatasetError(f"{root}: class folder(s) without images "
                           f"({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty[:5])}")
    return paths, names


def read_list(path):
    """(paths, labels as strings) from a ``path label`` file; the label is the
    last field, so paths may contain spaces."""
    base = os.path.dirname(os.path.abspath(path))
    paths, labels = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise DatasetError(f"{path}:{n}: expected 'path label', got {line!r}")
            p = parts[0] if os.path.isabs(parts[0]) else os.path.join(base, parts[0])
            if not os.path.isfile(p):
                raise DatasetError(f"{path}:{n}: image {parts[0]!r} not found (looked at {p})")
            paths.append(p)
            labels.append(parts[1])
    if not paths:
        raise DatasetError(f"{path}: no 'path label' lines")
    return paths, labels


def read_source(source):
    if os.path.isdir(source):
        return read_folder(source)
    if os.path.isfile(source):
        return read_list(source)
    raise DatasetError(f"{source}: no such folder or list file")


def name_classes(labels, class_names=None):
    """Class names and int labels.  With ``class_names`` (one name per line
    of --class-names) a label is one of them or an integer index into them;
    without, the sorted distinct labels are the names."""
    if class_names is None:
        names = sorted(set(labels), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    else:
        names = list(class_names)
    index = {c: i for i, c in enumerate(names)}
    ids, unknown = [], set()
    for s in labels:
        if s in index:
            ids.append(index[s])
        elif class_names is not None and s.isdigit() and int(s) < len(names):
            ids.append(int(s))
        else:
            unknown.add(s)
    if unknown:
        raise DatasetError(f"labels that are neither one of the {len(names)} class names nor an "
                           f"index into them: {', '.join(sorted(unknown)[:5])}")
    return names, np.array(ids, dtype=np.int64)


def load_dataset(data=None, train=None, test=None, test_fraction=0.5, class_names=None,
                 split_seed=0):
    """A Dataset from ``data`` (one folder, split per class with a fixed seed)
    or from ``train`` and ``test`` (folders or lists)."""
    if data is not None and (train is not None or test is not None):
        raise DatasetError("give either --data, or --train and --test, not both")
    if isinstance(class_names, str):
        with open(class_names, encoding="utf-8") as f:
            class_names = [line.strip() for line in f if line.strip()]
    if data is not None:
        paths, labels = read_source(data)
        names, y = name_classes(labels, class_names)
        if not 0 < test_fraction < 1:
            raise DatasetError("--test-fraction must be between 0 and 1")
        rng = np.random.default_rng(split_seed)
        is_test = np.zeros(len(y), bool)
        for c in range(len(names)):
            idx = rng.permutation(np.flatnonzero(y == c))
            if len(idx) < 2:
                raise DatasetError(f"{data}: class {names[c]!r} has {len(idx)} image(s); "
                                   f"a train/test split needs at least 2")
            is_test[idx[:max(1, int(round(len(idx) * test_fraction)))]] = True
        pick = lambda m: [p for p, t in zip(paths, m) if t]   # noqa: E731
        return Dataset(names, pick(~is_test), y[~is_test], pick(is_test), y[is_test])
    if train is None or test is None:
        raise DatasetError("give --data ROOT, or both --train and --test")
    train_paths, train_labels = read_source(train)
    test_paths, test_labels = read_source(test)
    names, y = name_classes(train_labels + test_labels, class_names)
    missing = sorted(set(range(len(names))) - set(y[:len(train_paths)].tolist()))
    if missing:
        raise DatasetError(f"{train}: no training images for class(es) "
                           f"{', '.join(names[i] for i in missing[:5])}")
    n = len(train_paths)
    return Dataset(names, train_paths, y[:n], test_paths, y[n:])


def sample_shots(labels, shots, seed, val_per_class=4):
    """(shot indices, validation indices): per class, the first ``shots`` of a
    seeded permutation, then up to min(shots, val_per_class) more (fewer if
    the class runs out).  Nested in ``shots`` for a fixed seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:shots])
        val.append(idx[shots:shots + min(shots, val_per_class)])
    return np.concatenate(train), np.concatenate(val)


# ------------------------------------------------------------------ features

class Backbone:
    """A loaded CLIP with cached image and text encoders."""

    def __init__(self, model_name, cache_dir, device=None, batch_size=64, progress=True):
        import jclip  # noqa: F401  (before jittor)
        from ..models.load import load, weights_sha256
        self.model, self.preprocess = load(model_name, device=device)
        self.name, self.sha = self.model.name, weights_sha256(self.model)
        self.cache_dir, self.batch_size, self.progress = cache_dir, batch_size, progress

    def images(self, paths):
        from ..features.encode import encode_image_files
        from ..features.cache import encode_images_cached

        def encode(chunk):
            return encode_image_files(self.model, chunk, self.preprocess, self.batch_size,
                                      strict=True, progress=False)[0]
        return encode_images_cached(paths, encode, self.name, self.sha, self.preprocess.id,
                                    self.cache_dir, self.batch_size, self.progress)

    def text_weights(self, class_names, templates):
        from ..features.encode import encode_texts
        from ..features.cache import cached_text_encoder
        from ..heads import text_classifier_weights
        enc = cached_text_encoder(lambda t: encode_texts(self.model, t), self.name, self.sha,
                                  self.cache_dir, progress=False)
        return text_classifier_weights(class_names, enc, templates)


# ------------------------------------------------------------------ methods

def topk_accuracy(logits, labels, k):
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < logits.shape[1] \
        else np.tile(np.arange(logits.shape[1]), (len(logits), 1))
    return float(100.0 * (top == np.asarray(labels)[:, None]).any(1).mean())


def scores(logits, labels):
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


def train_method(method, seed, x, y, xv, yv, text_weights, num_classes, backbone=None,
                 class_names=None, options=None):
    """Fit one method on shots (x, y) with validation (xv, yv); returns a
    callable ``logits(features, unseen=None)``; methods in TRANSFERS score
    unseen classes given as text weights (zero-shot) or names (CoOp/CoCoOp)."""
    from ..heads import LinearProbe, LPPlusPlus, TipAdapter, TipAdapterF, ZeroShot
    opt = dict(options or {})
    has_val = len(yv) > 0
    val = (xv, yv) if has_val else (None, None)
    if method == "zeroshot":
        # base-to-new passes the new classes' text weights
        return lambda f, new_text=None: ZeroShot(text_weights if new_text is None else new_text).logits(f)
    if method == "linear_probe":
        head = LinearProbe(num_classes=num_classes, **({} if has_val else {"Cs": (1.0,)}))
        head.fit(x, y, *val)
    elif method == "tip_adapter":
        head = TipAdapter().fit(x, y, text_weights, *val)
    elif method == "tip_adapter_f":
        head = TipAdapterF(seed=seed).fit(x, y, text_weights, *val)
    elif method == "lpp":
        head = LPPlusPlus(seed=seed).fit(x, y, text_weights, *val)
    elif method in ("coop", "cocoop"):
        from ..heads.prompt_learning import CoCoOp, CoOp
        if method == "coop":
            learner = CoOp(backbone.model, class_names, n_ctx=opt.get("n_ctx", 4),
                           ctx_init=opt.get("ctx_init", "a photo of a"),
                           class_specific=opt.get("class_specific", False),
                           position=opt.get("position", "end"), seed=seed)
        else:
            learner = CoCoOp(backbone.model, class_names, n_ctx=opt.get("n_ctx", 4),
                             ctx_init=opt.get("ctx_init", "a photo of a"),
                             position=opt.get("position", "end"), seed=seed)
        learner.fit(x, y, epochs=opt.get(f"{method}_epochs", 10),
                    batch_size=opt.get(f"{method}_batch_size", 32 if method == "coop" else 1),
                    lr=opt.get("lr", 0.002), progress=opt.get("progress", True))
        if opt.get("save_dir"):
            learner.save(os.path.join(opt["save_dir"], f"{method}-{opt['shots']}shot-seed{seed}.npz"))
        return lambda f, names=None: learner.logits(f, names, progress=opt.get("progress", True))
    else:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    return lambda f, unseen=None: head.logits(f)


def harmonic(a, b):
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


# ------------------------------------------------------------------ the study

def run_study(ds, backbone, methods, shots_list, seeds, templates="imagenet7",
              base_to_new=False, options=None, log=print):
    """Rows (dicts), one per method x shots x seed, with top-1/top-5 in %
    (base-to-new: base_*, new_*, and H of the top-1s)."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} (known: {', '.join(METHODS)})")
    options = dict(options or {})
    train_x = backbone.images(ds.train_paths)
    test_x = backbone.images(ds.test_paths)
    names = ds.class_names
    text = backbone.text_weights(names, templates)
    c = len(names)
    if base_to_new:
        if c < 2:
            raise DatasetError("base-to-new needs at least 2 classes")
        base = np.arange((c + 1) // 2)
        new = np.arange(len(base), c)
        keep = np.isin(ds.train_labels, base)
        train_x, train_y = train_x[keep], ds.train_labels[keep]
        train_names, train_text = [names[i] for i in base], text[base]
        tb, tn = np.isin(ds.test_labels, base), np.isin(ds.test_labels, new)
    else:
        train_y, train_names, train_text = ds.train_labels, names, text
    rows = []
    for shots in shots_list:
        for seed in seeds:
            idx, vidx = sample_shots(train_y, shots, seed)
            x, y, xv, yv = train_x[idx], train_y[idx], train_x[vidx], train_y[vidx]
            for method in methods:
                start = time.perf_counter()
                opt = dict(options, shots=shots)
                predict = train_method(method, seed, x, y, xv, yv, train_text, len(train_names),
                                       backbone, train_names, opt)
                row = dict(method=method, shots=shots, seed=seed)
                if not base_to_new:
                    row.update(scores(predict(test_x), ds.test_labels))
                else:
                    b = scores(predict(test_x[tb]), ds.test_labels[tb])
                    row.update(base_top1=b["top1"], base_top5=b["top5"])
                    if method in TRANSFERS:
                        new_names = [names[i] for i in new]
                        arg = text[new] if method == "zeroshot" else new_names
                        n = scores(predict(test_x[tn], arg), ds.test_labels[tn] - len(base))
                        row.update(new_top1=n["top1"], new_top5=n["top5"],
                                   H=harmonic(b["top1"], n["top1"]))
                    else:
                        row.update(new_top1=float("nan"), new_top5=float("nan"), H=float("nan"))
                row["seconds"] = round(time.perf_counter() - start, 3)
                rows.append(row)
                log(f"{LABELS[method]:>13} {shots:>3}-shot seed {seed}: " +
                    ", ".join(f"{k} {v:.2f}" for k, v in row.items()
                              if k not in ("method", "shots", "seed", "seconds")))
    return rows


def metric_names(rows):
    return [k for k in rows[0] if k not in ("method", "shots", "seed", "seconds")]


def summarise(rows):
    """{(method, shots): {metric: (mean, std over seeds)}} (NaN-free means)."""
    out = {}
    for r in rows:
        out.setdefault((r["method"], r["shots"]), []).append(r)
    summary = {}
    for key, group in out.items():
        summary[key] = {}
        for m in metric_names(rows):
            v = np.array([g[m] for g in group], dtype=float)
            summary[key][m] = (float(np.mean(v)), float(np.std(v))) if np.isfinite(v).all() \
                else (float("nan"), float("nan"))
    return summary


def format_table(rows):
    summary = summarise(rows)
    metrics = metric_names(rows)
    head = ["method", "shots"] + metrics
    lines = []
    for (method, shots), vals in summary.items():
        cells = [LABELS[method], str(shots)]
        for m in metrics:
            mean, std = vals[m]
            cells.append("-" if not np.isfinite(mean) else f"{mean:.2f} ± {std:.2f}")
        lines.append(cells)
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: " | ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths)] + [fmt(l) for l in lines])


def write_csv(path, rows):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def write_plot(path, rows, title="Few-shot accuracy"):
    from ..plot import line_plot
    summary = summarise(rows)
    metric = "H" if "H" in rows[0] else "top1"
    series = {}
    for (method, shots), vals in summary.items():
        xs, ys = series.setdefault(LABELS[method], ([], []))
        xs.append(shots)
        ys.append(vals[metric][0] if metric in vals else float("nan"))
    ylabel = "harmonic mean of base/new top-1 (%)" if metric == "H" else "top-1 accuracy (%)"
    return line_plot(path, series, title, "shots per class", ylabel)


# ------------------------------------------------------------------ CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m jclip.fewshot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("dataset")
    src.add_argument("--data", help="ROOT/<class>/<image>; a per-class test split is held out")
    src.add_argument("--train", help="train folder or 'path label' list")
    src.add_argument("--test", help="test folder or 'path label' list")
    src.add_argument("--test-fraction", type=float, default=0.5,
                     help="share of each class held out as test with --data (default 0.5)")
    src.add_argument("--class-names", help="file with one class name per line (integer labels index it)")
    p.add_argument("--model", required=True, help="CLIP name (ViT-B/32, ...) or weights file")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--templates", default="imagenet7", help="single, imagenet7 or imagenet80")
    p.add_argument("--base-to-new", action="store_true",
                   help="train on the first half of the classes, report base, new and H")
    pl = p.add_argument_group("CoOp / CoCoOp")
    pl.add_argument("--coop-epochs", type=int, default=50)
    pl.add_argument("--cocoop-epochs", type=int, default=10)
    pl.add_argument("--coop-batch-size", type=int, default=32)
    pl.add_argument("--cocoop-batch-size", type=int, default=1)
    pl.add_argument("--lr", type=float, default=0.002)
    pl.add_argument("--ctx-init", default="a photo of a", help="'' for random context")
    pl.add_argument("--n-ctx", type=int, default=4, help="context length with random init")
    pl.add_argument("--class-specific", action="store_true", help="CoOp: one context per class")
    pl.add_argument("--position", choices=("end", "middle", "front"), default="end")
    p.add_argument("--output", default="fewshot_results", help="folder for results.csv, accuracy.png, prompts/")
    p.add_argument("--cache", default=os.path.join("cache", "features"))
    p.add_argument("--batch-size", type=int, default=64, help="image encoding batch")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if min(args.shots) < 1:
        p.error("--shots must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        ds = load_dataset(args.data, args.train, args.test, args.test_fraction, args.class_names)
    except (DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"dataset: {ds.describe()}")
    try:
        backbone = Backbone(args.model, args.cache, args.device, args.batch_size, not args.no_progress)
    except (OSError, ValueError) as e:     # unknown name, missing or foreign weights file
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = dict(coop_epochs=args.coop_epochs, cocoop_epochs=args.cocoop_epochs,
                   coop_batch_size=args.coop_batch_size, cocoop_batch_size=args.cocoop_batch_size,
                   lr=args.lr, ctx_init=args.ctx_init or None, n_ctx=args.n_ctx,
                   class_specific=args.class_specific, position=args.position,
                   progress=not args.no_progress, save_dir=os.path.join(args.output, "prompts"))
    rows = run_study(ds, backbone, args.methods, args.shots, args.seeds, args.templates,
                     args.base_to_new, options)
    print()
    print(format_table(rows))
    csv_path = write_csv(os.path.join(args.output, "results.csv"), rows)
    png_path = write_plot(os.path.join(args.output, "accuracy.png"), rows,
                          f"{backbone.name}: {'base-to-new' if args.base_to_new else 'few-shot'} accuracy")
    with open(os.path.join(args.output, "run.json"), "w") as f:
        json.dump(dict(vars(args), backbone=backbone.name, backbone_sha256=backbone.sha,
                       dataset=ds.describe()), f, indent=1)
    print(f"\nwrote {csv_path}, {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
