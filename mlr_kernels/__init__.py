"""Fused multi-segment AdamW kernels (C++, Triton, CUDA) and the fused activation-capture hook."""

from mlr_kernels.optimizer import MLRAdamW

__all__ = ["MLRAdamW"]
__version__ = "0.1.0"
