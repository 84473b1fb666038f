"""FashionViL for MMF: model, losses, datasets, metrics and trainer."""
__version__ = "0.1.0"
