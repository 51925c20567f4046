"""Command line of the contest pipeline (train.sh and test.sh run it).

    python -m jclip.pipeline train [--config FILE] [--set lpp.epochs=50 ...]
    python -m jclip.pipeline test  [--images DIR] [--classes classes_b.txt] [--result result.txt]
                                   [--features KEY=DIR ...]

Everything is checked before any work: the options, the whole configuration,
the class lists, the device (``cuda`` where there is none is refused) and the
``--features`` keys (each a backbone of the configuration).  Exit status
(``jclip.commands``): 0 done; 2 a usage error or a bad configuration (one line
naming the file and key); 1 the work failed (one line).  ``mpirun -np N bash
test.sh ...`` shares the encoding over N ranks (``jclip.distributed``); the
files are the same.
"""
import argparse
from typing import Dict, List, Optional

from .. import distributed
from ..commands import (CommandParser, UsageError, check_device, check_keys, existing_dir, existing_file,
                        key_values, run)
from .config import Config, check_class_lists, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --set, as every pipeline command takes them."""
    parser.add_argument("--config", default=None, type=existing_file,
                        help="configuration JSON (default: the shipped one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set lpp.epochs=100 (repeatable)")


def add_features_argument(parser: argparse.ArgumentParser) -> None:
    """--features KEY=DIR: a backbone's image features from ``python -m jclip.extract``."""
    parser.add_argument("--features", action="append", default=[], metavar="KEY=DIR",
                        help="use the features jclip.extract wrote in DIR for backbone KEY "
                             "(e.g. vit=out/features_vit) instead of encoding (repeatable)")


def checked_config(args: argparse.Namespace) -> Config:
    """The configuration of ``--config``/``--set``, checked before any work:
    the file, the class lists, the device and the ``--features`` keys.
    Raises ConfigError / UsageError (exit status 2 through ``commands.run``)."""
    cfg = load_config(args.config, args.set)
    check_class_lists(cfg)
    check_device(cfg.device, f"{cfg.path}: device")
    features_of(args, cfg)
    return cfg


def features_of(args: argparse.Namespace, cfg: Config) -> Dict[str, str]:
    """{backbone key: folder} of --features: each KEY a backbone the
    configuration uses, each DIR an existing folder (UsageError otherwise)."""
    given = key_values(getattr(args, "features", []), "--features", "vit=out/features_vit")
    used = sorted(set(cfg.cascade.inmap_mix) | set(cfg.cascade.lpp_mix))
    check_keys(given, used, "--features", f"{cfg.path} (cascade.inmap_mix / cascade.lpp_mix)")
    for key, folder in given.items():
        try:
            existing_dir(folder)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--features {key}={folder}: {e}") from None
    return given


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m jclip.pipeline`` (train.sh, test.sh)."""
    p = CommandParser(prog="python -m jclip.pipeline", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "test"):
        s = sub.add_parser(name)
        add_config_arguments(s)
        if name == "test":
            s.add_argument("--images", type=existing_dir, help="test folder (default DATA_ROOT/TestSetB)")
            s.add_argument("--classes", type=existing_file, help="class list (default DATA_ROOT/classes_b.txt)")
            s.add_argument("--result", default="result.txt", help="output file")
            add_features_argument(s)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run train or test; returns the exit status.  Under mpirun a failing
    rank's line names the rank, and it stops every rank."""
    distributed.start()

    def work() -> None:
        a = build_parser().parse_args(argv)
        cfg = checked_config(a)
        if a.cmd == "train":
            from .train import train
            train(cfg)
        else:
            from .test import test
            test(cfg, a.images, a.classes, a.result, features_of(a, cfg))
    return run(work)
