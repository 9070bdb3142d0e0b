"""lory-lightning: pre-training Lory language models with PyTorch Lightning."""

__version__ = "0.1.0"
