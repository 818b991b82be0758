"""Test-wide setup. Triton kernels run on CPU tensors through Triton's interpreter when there is no
GPU; the variable must be set before anything imports triton."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mlr_kernels import host_reads  # noqa: E402 (after TRITON_INTERPRET)


@pytest.fixture(params=host_reads.HOST_READ_PATHS)
def each_host_read_path(request, monkeypatch):
    """Run a test with the optimizer's per-step reads in C++ and in Python, as many as the build
    has (mlr_kernels/host_reads.py): the contract must hold either way."""
    monkeypatch.setenv(host_reads.HOST_READS_ENV, request.param)
    assert host_reads.host_reads() == request.param
    return request.param
