"""Few-shot benchmark on any image-folder dataset: one command for zero-shot,
linear probe, Tip-Adapter(-F), LP++, CoOp and CoCoOp over shots and seeds.

    python -m jclip.fewshot --data flowers/ --model ViT-B/32 --shots 1 5 16 \\
        --seeds 1 2 3 --methods zeroshot tip_adapter coop --output runs/flowers

Datasets: ``--data ROOT`` (``ROOT/<class>/<image>``, a seeded per-class
test split is held out), or ``--train`` and ``--test``, each a folder like
ROOT or a text file of ``path label`` lines (relative paths are read from the
list's folder; labels are class names, or integers named by ``--class-names``).

Class-disjoint splits (multi-task episodic CoCoOp/CoOp, scored on unseen
classes): ``--train-classes DIR --test-classes DIR [--val-classes DIR]``, or
``--data ROOT`` where ROOT holds ``train/ [val/] test/`` class folders (as
tiered-ImageNet ships); ``--episode 5-way 1-shot``, ``--eval-way all``,
``--support K``.

Image and prompt features are cached (jclip.features), so a second run with
other methods or seeds encodes nothing; ``--features DIR`` reads the image
features ``python -m jclip.extract`` wrote instead.  ``mpirun -np N python -m
jclip.fewshot ...`` shares the encoding over N ranks (jclip.distributed); the
heads run once, on rank 0, which alone prints and writes the same files.
Hyper-parameters: ``--set METHOD.PARAM=VALUE`` (repeatable) for any head's
(``--set lpp.epochs=100 --set tip_adapter.beta_scale=5``), checked by the
head before any model is loaded; unset ones take the head classes' defaults
(jclip.heads; CoOp: 50 epochs, batch 32; CoCoOp: 10 epochs, batch 1, as the
official configs).
"""
import argparse
import os
from typing import Any, Dict, Optional, Sequence

from .. import distributed
from ..commands import (CommandParser, UsageError, check_later, checked_later, device, existing_dir,
                        existing_file, existing_path, number, positive_int, run, seed)
from ..extract import FeaturesError
from .datasets import DatasetError, check_classes_for, load_class_splits, load_dataset, split_root
from .params import ParamError, add_param_arguments, method_params, resolved
from .report import format_table, write_csv, write_plot, write_run_record
from .study import DEFAULT_METHODS, METHODS, run_study


def all_or_positive(text: str) -> str:
    """``all`` or a positive whole number (kept as text; ``--eval-way``, ``--query``)."""
    if text != "all":
        try:
            positive_int(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be 'all' or a positive whole number, not {text!r}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m jclip.fewshot``.  Paths are checked after the
    hyper-parameters (``check_later``), still before any work."""
    p = CommandParser(prog="python -m jclip.fewshot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("dataset")
    src.add_argument("--data", type=checked_later(existing_path), help="ROOT/<class>/<image>; a per-class test split is held out")
    src.add_argument("--train", type=checked_later(existing_path), help="train folder or 'path label' list")
    src.add_argument("--test", type=checked_later(existing_path), help="test folder or 'path label' list")
    src.add_argument("--test-fraction", type=number(gt=0, lt=1), default=0.5,
                     help="share of each class held out as test with --data (default 0.5)")
    src.add_argument("--class-names", type=checked_later(existing_file), help="file with one class name per line (integer labels index it)")
    src.add_argument("--train-classes", type=checked_later(existing_path), help="class-disjoint splits: the training classes (folder or list)")
    src.add_argument("--val-classes", type=checked_later(existing_path), help="the validation classes (choose the epoch)")
    src.add_argument("--test-classes", type=checked_later(existing_path), help="the held-out test classes")
    ep = p.add_argument_group("episodic (with class-disjoint splits)")
    ep.add_argument("--episode", nargs="+", default=["5-way", "1-shot"],
                    help="training task, 'N-way K-shot' (default 5-way 1-shot)")
    ep.add_argument("--episodes-per-epoch", type=positive_int, help="tasks per epoch (default: the class's 100)")
    ep.add_argument("--eval-way", default="all", type=all_or_positive, help="'all' (every test class) or N classes per episode")
    ep.add_argument("--support", type=positive_int, default=1, help="K support images per class (nearest centroid)")
    ep.add_argument("--query", default="all", type=all_or_positive, help="query images per class per episode, or 'all' the rest")
    ep.add_argument("--eval-episodes", type=positive_int, default=5, help="evaluation episodes per seed")
    ep.add_argument("--val-per-class", type=positive_int, default=10, help="val images per class for choosing the epoch")
    p.add_argument("--model", required=True, help="CLIP name (ViT-B/32, ...) or weights file")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5, 16])
    p.add_argument("--seeds", type=seed, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", choices=METHODS,
                   help=f"default: {' '.join(DEFAULT_METHODS)} (episodic: cocoop)")
    p.add_argument("--templates", help="single, imagenet7 or imagenet80 (default imagenet7; episodic: single)")
    p.add_argument("--base-to-new", action="store_true",
                   help="train on the first half of the classes, report base, new and H")
    add_param_arguments(p)
    p.add_argument("--output", default="fewshot_results",
                   help="folder for results.csv, accuracy.png, run.json, prompts/")
    p.add_argument("--cache", default=os.path.join("cache", "features"))
    p.add_argument("--batch-size", type=positive_int, default=64, help="image encoding batch")
    p.add_argument("--features", metavar="DIR", type=checked_later(existing_dir),
                   help="image features from `python -m jclip.extract` (same model) instead of encoding")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see ``python -m jclip.fewshot --help``); UsageError
    (status 2 through ``commands.run``) for a bad option."""
    return build_parser().parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the study; returns the exit status (jclip.commands: 2 a bad option,
    dataset, hyper-parameter or model; 1 a failed run; one ``error:`` line).

    Under mpirun every rank runs this: they share the encoding, then the ranks
    other than 0 exit (status 0) and rank 0 fits the heads and writes the
    outputs.  A rank that fails ends the run with ``error: rank R of N: ...``."""
    distributed.start()
    return run(lambda: run_cli(argv), usage_errors=(DatasetError, FeaturesError, ParamError, ModelError))


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
    """``main`` in one process (or one rank), raising on any problem."""
    parser = build_parser()
    args = parser.parse_args(argv)
    params = method_params(args)        # every head's settings, before any model is loaded
    check_later(parser, args)           # the files and folders given exist
    splits_given = args.train_classes or args.test_classes or args.val_classes
    roots = split_root(args.data) if args.data and not (args.train or args.test) else None
    if splits_given or roots:
        if splits_given and (args.data or args.train or args.test):
            raise DatasetError("give --train-classes/--test-classes, or --data/--train/--test, not both")
        if splits_given and not (args.train_classes and args.test_classes):
            raise DatasetError("class-disjoint splits need both --train-classes and --test-classes")
        roots = roots or dict(train=args.train_classes, test=args.test_classes, val=args.val_classes)
        splits = load_class_splits(roots["train"], roots["test"], roots.get("val"))
        return run_episodic_cli(args, splits, params)
    ds = load_dataset(args.data, args.train, args.test, args.test_fraction, args.class_names)
    if args.base_to_new:
        check_classes_for("--base-to-new", ds.class_names, 2)
    print(f"dataset: {ds.describe()}")
    backbone = open_backbone(args)
    methods = args.methods or list(DEFAULT_METHODS)
    templates = args.templates or "imagenet7"
    rows = run_study(ds, backbone, methods, args.shots, args.seeds, templates,
                     args.base_to_new, params, save_dir=os.path.join(args.output, "prompts"))
    print()
    print(format_table(rows))
    csv_path = write_csv(os.path.join(args.output, "results.csv"), rows)
    png_path = write_plot(os.path.join(args.output, "accuracy.png"), rows,
                          f"{backbone.name}: {'base-to-new' if args.base_to_new else 'few-shot'} accuracy")
    write_run_record(os.path.join(args.output, "run.json"),
                     dict(vars(args), methods=methods, templates=templates,
                          hyper_parameters=resolved(params, methods),
                          backbone=backbone.name, backbone_sha256=backbone.sha, dataset=ds.describe()))
    print(f"\nwrote {csv_path}, {png_path}")
    return 0


class ModelError(ValueError):
    """--model cannot be opened (unknown name, missing or foreign weights file)."""


def open_backbone(args: argparse.Namespace):
    """The CachedEncoder of --model; ModelError (a usage error: status 2) for
    an unknown name or a missing or foreign weights file."""
    from .encoder import CachedEncoder
    try:
        return CachedEncoder(args.model, args.cache, args.device, args.batch_size, not args.no_progress,
                             args.features)
    except FeaturesError:
        raise
    except (OSError, ValueError) as e:
        raise ModelError(str(e)) from None


def run_episodic_cli(args: argparse.Namespace, splits, params: Dict[str, Dict[str, Any]]) -> int:
    """Multi-task episodic training and held-out evaluation (--train-classes ...)."""
    from ..heads.episodes import parse_episode
    from .episodic import EPISODIC_METHODS, format_episodic, run_episodic
    try:
        episode = parse_episode(" ".join(args.episode))
    except ValueError as e:
        raise UsageError(f"--episode: {e}") from None
    methods = args.methods or ["cocoop"]
    bad = [m for m in methods if m not in EPISODIC_METHODS]
    if bad:
        raise UsageError(f"episodic training supports --methods {' '.join(EPISODIC_METHODS)}, not "
                         f"{' '.join(bad)}")
    print(f"dataset: {splits.describe()}")
    backbone = open_backbone(args)
    templates = args.templates or "single"
    way = None if args.eval_way == "all" else int(args.eval_way)
    query = None if args.query == "all" else int(args.query)
    try:
        rows = run_episodic(splits, backbone, methods, args.seeds, episode, way, args.support, query,
                            args.eval_episodes, args.val_per_class, templates, params,
                            save_dir=os.path.join(args.output, "prompts"))
    except DatasetError:
        raise
    except ValueError as e:             # too few classes or images for the episodes asked for
        raise DatasetError(str(e)) from None
    print()
    print(format_episodic(rows))
    csv_path = write_csv(os.path.join(args.output, "episodic.csv"), rows)
    write_run_record(os.path.join(args.output, "run.json"),
                     dict(vars(args), methods=methods, templates=templates, episode=list(episode),
                          hyper_parameters=resolved(params, methods), backbone=backbone.name,
                          backbone_sha256=backbone.sha, dataset=splits.describe()))
    print(f"\nwrote {csv_path}")
    return 0
