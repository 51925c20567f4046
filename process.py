#!/usr/bin/env python
"""Make the 4-shot training list and a held-out validation list: see jclip/data/process_cli.py."""
import sys

from jclip.data.process_cli import main

if __name__ == "__main__":
    sys.exit(main())
