"""Convert official CLIP / ConvNeXt-V2 checkpoints into jclip weights.

``python convert.py`` (a shim for ``main`` here).  No PyTorch needed.  With no
arguments, makes weights/ViT-B-32.safetensors,
weights/RN101.safetensors and weights/convnextv2_base_1k_224_ema.safetensors
from the originals in pretrained/, downloading (and verifying) any that are
missing.  ``--format pkl`` (or an ``--out`` ending in ``.pkl``) writes
Jittor's ``.pkl`` instead.  One model failing does not stop the others; the
exit status is 1 when any failed, and the failures are listed at the end.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from ..catalog import DEFAULT_MODELS, available, card_for_sha256
from ..commands import CommandParser, UsageError, describe, existing_file, positive_float, run
from ..io import sha256_file
from . import download as dl
from .checkpoint import FORMATS, CheckpointError, format_for_path
from .convert import convert_checkpoint, convert_model, is_up_to_date, model_name_problem

# What one failed model may raise (anything else is a bug and should show).
FAILURES = (CheckpointError, ValueError, KeyError, OSError)


def _dtype(args):
    return "float16" if args.half else "float32"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python convert.py``."""
    p = CommandParser(
        prog="convert.py", description="Convert official CLIP and ConvNeXt-V2 checkpoints into "
        "jclip weights (.safetensors by default; .pkl files jittor.load reads "
        "with --format pkl). PyTorch is not needed.",
        epilog="examples:\n"
        "  python convert.py                       # the default models\n"
        "  python convert.py --models ViT-B/16 RN50 --half\n"
        "  python convert.py ~/Downloads/ViT-B-32.pt --out weights/ViT-B-32.safetensors\n"
        "  python convert.py --format pkl          # Jittor .pkl files instead\n"
        "\nknown models: " + ", ".join(available()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", metavar="PATH", type=existing_file,
                   help="convert this one checkpoint file instead of named "
                   "models (TorchScript, torch.save zip or legacy, .safetensors or .pkl)")
    p.add_argument("--out", metavar="FILE",
                   help="output file for PATH (default: OUT_DIR/<stem>.safetensors); "
                   "a name ending in .pkl gives Jittor's format unless --format says otherwise")
    p.add_argument("--name", metavar="MODEL",
                   help="model name recorded for PATH (default: recognised "
                   "from the published hash, else the file stem)")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   default=list(DEFAULT_MODELS),
                   help="models to convert (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: safetensors, or pkl for an --out ending in .pkl)")
    p.add_argument("--src", default="pretrained", metavar="DIR",
                   help="folder of original checkpoints; missing ones are "
                   "downloaded here (default: %(default)s)")
    p.add_argument("--out-dir", default="weights", metavar="DIR",
                   help="folder for converted weights (default: %(default)s)")
    p.add_argument("--half", action="store_true",
                   help="store float16 weights (default: float32)")
    p.add_argument("--force", action="store_true",
                   help="convert even when the output is up to date")
    p.add_argument("--no-download", action="store_true",
                   help="fail instead of downloading a missing original")
    p.add_argument("--timeout", type=positive_float, default=dl.STALL_TIMEOUT, metavar="S",
                   help="a download with no data for S seconds fails (default: %(default)s)")
    p.add_argument("--max-time", type=positive_float, default=dl.MAX_TIME, metavar="S",
                   help="a download taking longer than S seconds in all fails "
                   "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar or messages, only errors")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python convert.py``; returns the exit status (1: a model failed)."""
    return run(lambda: convert(build_parser().parse_args(argv)))


def convert(args: argparse.Namespace) -> int:
    """Convert what ``args`` asks for; each failure is one ``error:`` line."""
    log = (lambda *a: None) if args.quiet else print
    dtype = _dtype(args)
    failed = []

    def fail(what, e):
        print(f"error: {describe(e)}", file=sys.stderr)
        failed.append(what)

    if args.path:
        fmt = args.format or (format_for_path(args.out) if args.out else "safetensors")
        out = args.out or os.path.join(
            args.out_dir, os.path.splitext(os.path.basename(args.path))[0] + "." + fmt)
        try:
            sha = sha256_file(args.path)
            card = card_for_sha256(sha)
            name = args.name or (card.name if card else None)
            if not args.force and is_up_to_date(out, sha, dtype, fmt):
                log(f"{out}: up to date")
            else:
                log(f"{args.path} -> {out} ({dtype}, {fmt})")
                convert_checkpoint(args.path, out, model=name, dtype=dtype,
                                   source_sha256=sha, fmt=fmt)
        except FAILURES as e:
            fail(args.path, e)
    else:
        if args.out or args.name:
            raise UsageError("convert.py: --out and --name go with PATH; use --out-dir for models")
        for name in args.models:        # every name checked before the first download
            problem = model_name_problem(name)
            if problem:
                raise UsageError(f"convert.py: --models {problem}")
        for name in args.models:
            try:
                convert_model(name, args.src, args.out_dir, dtype,
                              force=args.force,
                              allow_download=not args.no_download,
                              progress=not args.quiet, log=log,
                              fmt=args.format or "safetensors",
                              timeout=args.timeout, max_time=args.max_time)
            except FAILURES as e:
                fail(name, e)
    if len(failed) > 1 or (failed and not args.path and len(args.models) > 1):
        print(f"failed ({len(failed)}): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
