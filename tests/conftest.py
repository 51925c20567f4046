"""Shared test setup: jclip is imported first so Jittor starts with its safe defaults."""
import os
import sys

os.environ.setdefault("log_silent", "1")  # keep Jittor's info logs out of test output
import jclip  # noqa: E402,F401  (must precede any `import jittor`)

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py and friends
