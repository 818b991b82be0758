"""ML-LR: secure instruction fine-tuning with modular layer-wise learning rates (arXiv 2410.04524)."""

__version__ = "0.1.0"
