#!/usr/bin/env python
"""Convert official CLIP / ConvNeXt-V2 checkpoints into jclip weights: see jclip/weights/convert_cli.py."""
import sys

from jclip.weights.convert_cli import main

if __name__ == "__main__":
    sys.exit(main())
