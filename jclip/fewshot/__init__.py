"""Few-shot studies on any image folder: ``python -m jclip.fewshot``.

datasets (folders, ``path label`` lists, seeded splits and shots), backbone
(CLIP with cached features), study (methods x shots x seeds through
``jclip.heads.HEADS``), report (table, CSV, plot), cli (the command line).
"""
