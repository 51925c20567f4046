"""Few-shot studies on any image folder (python -m jclip.fewshot)."""
import sys

from .cli import main

sys.exit(main())
