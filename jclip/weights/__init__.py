"""Weights files: the torch-free checkpoint reader, jclip's own weights files, downloads, naming."""
