"""Command line of the contest pipeline (train.sh and test.sh run it).

    python -m jclip.pipeline train [--config FILE] [--set lpp.epochs=50 ...]
    python -m jclip.pipeline test  [--images DIR] [--classes classes_b.txt] [--result result.txt]

Exit status: 0 done; 2 a bad configuration (one line naming the file and key);
1 any other error (one line).  ``mpirun -np N bash test.sh ...`` shares the
encoding over N ranks (``jclip.distributed``); the files are the same.
"""
import argparse
import sys
from typing import Dict, List, Optional

from .. import distributed
from ..data.contest import ContestFormatError
from .config import load_for_command


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --set, as every pipeline command takes them."""
    parser.add_argument("--config", default=None, help="configuration JSON (default: the shipped one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set lpp.epochs=100 (repeatable)")


def add_features_argument(parser: argparse.ArgumentParser) -> None:
    """--features KEY=DIR: a backbone's image features from ``python -m jclip.extract``."""
    parser.add_argument("--features", action="append", default=[], metavar="KEY=DIR",
                        help="use the features jclip.extract wrote in DIR for backbone KEY "
                             "(e.g. vit=out/features_vit) instead of encoding (repeatable)")


def features_of(args: argparse.Namespace) -> Dict[str, str]:
    """{backbone key: folder} of --features; exits 2 on a malformed value."""
    out = {}
    for item in args.features:
        key, sep, folder = item.partition("=")
        if not sep or not key or not folder:
            sys.exit(f"error: --features {item!r}: expected KEY=DIR (e.g. vit=out/features_vit)")
        out[key] = folder
    return out


def run(command, args: argparse.Namespace) -> None:
    """Load the configuration, run ``command(cfg)`` and turn errors into one line
    and an exit status (2: the configuration, 1: anything else).  Under mpirun
    the line names the rank, and a failing rank stops every rank."""
    distributed.start()
    with distributed.failures_end_the_run():
        cfg = load_for_command(args.config, args.set)
        try:
            command(cfg)
        except (ContestFormatError, ValueError, OSError) as e:
            sys.exit(f"error: {e}")


def main(argv: Optional[List[str]] = None) -> None:
    from .test import test
    from .train import train
    p = argparse.ArgumentParser(prog="python -m jclip.pipeline", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "test"):
        s = sub.add_parser(name)
        add_config_arguments(s)
        if name == "test":
            s.add_argument("--images", help="test folder (default DATA_ROOT/TestSetB)")
            s.add_argument("--classes", help="class list (default DATA_ROOT/classes_b.txt)")
            s.add_argument("--result", default="result.txt", help="output file")
            add_features_argument(s)
    a = p.parse_args(argv)
    if a.cmd == "train":
        run(train, a)
    else:
        run(lambda cfg: test(cfg, a.images, a.classes, a.result, features_of(a)), a)


if __name__ == "__main__":
    main()
