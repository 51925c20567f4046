"""Parameter budget of the configuration test.sh uses.

    python budget.py [--config jclip/pipeline/default.json] [--set KEY=VALUE]
                     [--limit 500000000] [--limit-on loaded|by-use|by-calls|both|all]
                     [--from-weights]

Prints each component's parameters and three totals: loaded (each weight
once), by use (once per cascade stage using it) and by calls (once per
forward pass the pipeline runs; equal to loaded, since each image and each
prompt is encoded once per backbone).  The last line says whether the count
the limit applies to (loaded by default) is within it; exit 1 when over,
2 for a bad configuration.  Known architectures are counted from their
shapes (no weights, no Jittor); --from-weights reads the weights files.
"""
import argparse
from typing import Optional, Sequence

from ..commands import CommandParser, positive_int, run
from .budget import LIMIT_APPLIES_TO, report
from .config import DEFAULT_CONFIG, check_class_lists, load_config


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python budget.py``."""
    p = CommandParser(prog="budget.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="configuration JSON")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set budget.limit=400000000 (repeatable)")
    p.add_argument("--limit", type=positive_int, help="default: budget.limit in the configuration")
    p.add_argument("--limit-on", choices=tuple(LIMIT_APPLIES_TO),
                   help="which total the limit applies to (default: budget.limit_on, loaded)")
    p.add_argument("--from-weights", action="store_true",
                   help="count from the weights files even for known architectures")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python budget.py``; returns the exit status (1: over the limit or a
    failure, 2: a bad configuration)."""
    def count() -> int:
        a = build_parser().parse_args(argv)
        cfg = load_config(a.config, a.set)
        check_class_lists(cfg)
        _, _, over = report(cfg, a.from_weights, a.limit, a.limit_on)
        return 1 if over else 0
    return run(count)
