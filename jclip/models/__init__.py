"""Neural networks: CLIP (ViT and ModifiedResNet towers), ConvNeXt-V2, the tokenizer, loading by name."""
