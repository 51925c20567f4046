"""Few-shot studies on any image folder (python -m jclip.fewshot)."""
