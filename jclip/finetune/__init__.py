"""Fine-tuning ConvNeXt-V2 (the contest's dog head)."""
