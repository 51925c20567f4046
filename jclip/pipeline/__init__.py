"""The contest pipeline: configuration, training, the cascade, the result file."""
