"""Features: batched CLIP encoding and the feature cache."""
