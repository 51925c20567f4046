#!/usr/bin/env python
"""Parameter budget of the configuration test.sh uses.

    python budget.py [--config jclip/pipeline/default.json] [--limit 500000000]
                     [--limit-on loaded|by-use|both] [--from-weights]

Prints each component's parameters, the totals by loaded weights and by use,
and the limit; exits 1 when over it.  Known architectures are counted from
their shapes (no weights needed); --from-weights reads the weights files.
"""
import argparse
import sys

from jclip.pipeline.budget import report
from jclip.pipeline.cascade import DEFAULT_CONFIG, load_config
from jclip.data.contest import ContestFormatError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, help="default: budget.limit in the configuration")
    p.add_argument("--limit-on", choices=("loaded", "by-use", "both"),
                   help="which total the limit applies to (default: budget.limit_on)")
    p.add_argument("--from-weights", action="store_true",
                   help="count from the weights files even for known architectures")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
        _, _, over = report(cfg, a.from_weights, a.limit, a.limit_on)
    except (ContestFormatError, ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
