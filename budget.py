#!/usr/bin/env python
"""Parameter budget of the configuration test.sh uses: see jclip/pipeline/budget_cli.py."""
import sys

from jclip.pipeline.budget_cli import main

if __name__ == "__main__":
    sys.exit(main())
