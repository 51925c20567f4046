"""Measure the cascade's stages on held-out training images, and tune it.

    python -m jclip.validate report [--config FILE] [--set KEY=VALUE] [--out out/val_report]
    python -m jclip.validate sweep  [--config FILE] [--set KEY=VALUE] [--out out/val_sweep]
                                    [--write out/tuned.json]
    (bash val.sh report|sweep ... runs the same)

Images: process.py's ``val.txt`` minus the images train.sh used (the shots and
the images that chose its epochs).  No test image is read.  Two setups are
measured (see ``simulation``): the trained heads, and a simulated one with
seen classes held out as unseen.  The sweep scores candidate settings on the
simulated setup and writes the best configuration for train.sh/test.sh.
Every number is a pure function of the configuration, the lists and the seed:
a re-run writes the same files (times go to ``timings.json`` only).
Everything is checked before any work, as for train.sh and test.sh
(``jclip.pipeline.cli.checked_config``).  Exit status (``jclip.commands``):
0 done; 2 a usage error or a bad configuration; 1 the work failed.
"""
import argparse
import os
from typing import List, Optional

from .. import distributed
from ..commands import CommandParser, positive_int, run, seed
from ..pipeline.cli import add_config_arguments, add_features_argument, checked_config, features_of


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m jclip.validate`` (val.sh)."""
    p = CommandParser(prog="python -m jclip.validate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, default_out in (("report", "val_report"), ("sweep", "val_sweep")):
        s = sub.add_parser(name)
        add_config_arguments(s)
        s.add_argument("--out", help=f"output folder (default OUT_DIR/{default_out})")
        s.add_argument("--seed", type=seed, default=1, help="seed of the held-out (simulated unseen) classes")
        s.add_argument("--holdout", type=positive_int, help="classes held out as unseen (default: as many as "
                       "the test set's unseen classes, at most half the non-dog classes)")
        s.add_argument("--per-class", type=positive_int, help="at most this many validation images per class")
        add_features_argument(s)
        if name == "sweep":
            s.add_argument("--write", help="tuned configuration to write (default OUT_DIR/tuned.json)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the report or the sweep; returns the exit status."""
    distributed.start()

    def work() -> None:
        a = build_parser().parse_args(argv)
        cfg = checked_config(a)
        out = a.out or os.path.join(cfg.out_dir, "val_report" if a.cmd == "report" else "val_sweep")
        if a.cmd == "report":
            from .report import report
            report(cfg, out, a.holdout, a.seed, a.per_class, features_of(a, cfg))
        else:
            from .sweep import sweep
            sweep(cfg, out, a.write or os.path.join(cfg.out_dir, "tuned.json"),
                  a.holdout, a.seed, a.per_class, features_of(a, cfg))
    return run(work)
