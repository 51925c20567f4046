#!/usr/bin/env python
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
import sys

from jclip.pipeline.budget import LIMIT_APPLIES_TO, report
from jclip.pipeline.config import DEFAULT_CONFIG, load_for_command
from jclip.data.lists import ListFormatError


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="configuration JSON")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set budget.limit=400000000 (repeatable)")
    p.add_argument("--limit", type=int, help="default: budget.limit in the configuration")
    p.add_argument("--limit-on", choices=tuple(LIMIT_APPLIES_TO),
                   help="which total the limit applies to (default: budget.limit_on, loaded)")
    p.add_argument("--from-weights", action="store_true",
                   help="count from the weights files even for known architectures")
    a = p.parse_args(argv)
    cfg = load_for_command(a.config, a.set)
    try:
        _, _, over = report(cfg, a.from_weights, a.limit, a.limit_on)
    except (ListFormatError, ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {e}")
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    main()
