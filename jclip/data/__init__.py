"""Data: image decoding and preprocessing, list files, the contest's formats."""
