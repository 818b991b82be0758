"""Test-wide setup. Triton kernels run on CPU tensors through Triton's interpreter when there is no
GPU; the variable must be set before anything imports triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
