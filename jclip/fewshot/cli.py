"""Few-shot benchmark on any image-folder dataset: one command for zero-shot,
linear probe, Tip-Adapter(-F), LP++, CoOp and CoCoOp over shots and seeds.

    python -m jclip.fewshot --data flowers/ --model ViT-B/32 --shots 1 5 16 \\
        --seeds 1 2 3 --methods zeroshot tip_adapter coop --output runs/flowers

Datasets: ``--data ROOT`` (``ROOT/<class>/<image>``, a seeded per-class
test split is held out), or ``--train`` and ``--test``, each a folder like
ROOT or a text file of ``path label`` lines (relative paths are read from the
list's folder; labels are class names, or integers named by ``--class-names``).

Image and prompt features are cached (jclip.features), so a second run with
other methods or seeds encodes nothing.  Hyper-parameters left unset take the
head classes' defaults (jclip.heads; CoOp: 50 epochs, batch 32; CoCoOp: 10
epochs, batch 1, as the official configs).
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from .datasets import DatasetError, load_dataset
from .report import format_table, write_csv, write_plot, write_run_record
from .study import METHODS, run_study

PROMPT_LEARNERS = ("coop", "cocoop")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see ``python -m jclip.fewshot --help``)."""
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
    pl = p.add_argument_group("CoOp / CoCoOp (unset: the class default)")
    for m in PROMPT_LEARNERS:
        pl.add_argument(f"--{m}-epochs", type=int)
        pl.add_argument(f"--{m}-batch-size", type=int)
    pl.add_argument("--lr", type=float)
    pl.add_argument("--ctx-init", help="words that initialise the context ('' for random context)")
    pl.add_argument("--n-ctx", type=int, help="context length with random init")
    pl.add_argument("--class-specific", action="store_true", help="CoOp: one context per class")
    pl.add_argument("--position", choices=("end", "middle", "front"), help="where the class tokens go")
    p.add_argument("--output", default="fewshot_results",
                   help="folder for results.csv, accuracy.png, run.json, prompts/")
    p.add_argument("--cache", default=os.path.join("cache", "features"))
    p.add_argument("--batch-size", type=int, default=64, help="image encoding batch")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if min(args.shots) < 1:
        p.error("--shots must be positive")
    return args


def method_params(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """{method: hyper-parameters} from the flags (None: the class default)."""
    shared = dict(lr=args.lr, ctx_init=args.ctx_init, n_ctx=args.n_ctx, position=args.position,
                  progress=not args.no_progress)
    params = {m: dict(shared, epochs=getattr(args, f"{m}_epochs"),
                      batch_size=getattr(args, f"{m}_batch_size")) for m in PROMPT_LEARNERS}
    params["coop"]["class_specific"] = args.class_specific
    return params


def resolved(params: Dict[str, Dict[str, Any]], methods: List[str]) -> Dict[str, Dict[str, Any]]:
    """The hyper-parameters each used method runs with, defaults filled in (for run.json)."""
    from ..heads import HEADS
    return {m: {k: (HEADS[m].defaults().get(k) if v is None else v) for k, v in params[m].items()}
            for m in params if m in methods}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the study; returns the exit status (2: bad dataset or model)."""
    args = parse_args(argv)
    try:
        ds = load_dataset(args.data, args.train, args.test, args.test_fraction, args.class_names)
    except (DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"dataset: {ds.describe()}")
    from .backbone import Backbone
    try:
        backbone = Backbone(args.model, args.cache, args.device, args.batch_size, not args.no_progress)
    except (OSError, ValueError) as e:     # unknown name, missing or foreign weights file
        print(f"error: {e}", file=sys.stderr)
        return 2
    params = method_params(args)
    rows = run_study(ds, backbone, args.methods, args.shots, args.seeds, args.templates,
                     args.base_to_new, params, save_dir=os.path.join(args.output, "prompts"))
    print()
    print(format_table(rows))
    csv_path = write_csv(os.path.join(args.output, "results.csv"), rows)
    png_path = write_plot(os.path.join(args.output, "accuracy.png"), rows,
                          f"{backbone.name}: {'base-to-new' if args.base_to_new else 'few-shot'} accuracy")
    write_run_record(os.path.join(args.output, "run.json"),
                     dict(vars(args), hyper_parameters=resolved(params, args.methods),
                          backbone=backbone.name, backbone_sha256=backbone.sha, dataset=ds.describe()))
    print(f"\nwrote {csv_path}, {png_path}")
    return 0
