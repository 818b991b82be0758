"""The environment record of a run's report: versions, kernel, SIMD level, CPU, threads."""

from __future__ import annotations

import platform

import numpy
import pytest
import tokenizers
import torch
import transformers
from mlr import environment as env_module
from mlr.environment import describe, environment

from mlr_kernels.backends import cpu as cpu_kernel
from mlr_kernels.host_reads import HOST_READS_ENV, host_reads


def test_the_record_names_the_versions_kernel_cpu_and_threads():
    env = environment("cpu", {"cpu/torch.float32": "cpu"})
    assert (env["python"], env["torch"], env["transformers"], env["tokenizers"], env["numpy"]) == (
        platform.python_version(), torch.__version__, transformers.__version__,
        tokenizers.__version__, numpy.__version__)
    assert env["kernel_backends"] == {"cpu/torch.float32": "cpu"}
    assert env["torch_threads"] == torch.get_num_threads() and env["device"] == "cpu"
    assert env["cpu"] and env["cpu"] != "unknown"
    text = describe(env)
    assert f"torch {torch.__version__}" in text and "cpu/torch.float32: cpu" in text
    assert env["cpu"] in text


@pytest.mark.skipif(not cpu_kernel.simd_levels(), reason="the C++ CPU kernel is not built")
def test_the_simd_level_is_the_one_the_kernel_runs_at(monkeypatch):
    assert environment("cpu")["simd_level"] == cpu_kernel.simd_levels()[-1]
    monkeypatch.setenv(cpu_kernel.SIMD_ENV, "baseline")  # what MLR_CPU_SIMD forces is recorded
    assert environment("cpu")["simd_level"] == "baseline"


def test_the_host_reads_recorded_are_the_ones_the_optimizer_makes(monkeypatch):
    assert environment("cpu")["host_reads"] == host_reads()
    monkeypatch.setenv(HOST_READS_ENV, "python")
    env = environment("cpu")
    assert env["host_reads"] == "python" and "host reads in python" in describe(env)


def test_the_cpu_model_falls_back_to_platform_without_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(env_module, "CPUINFO", tmp_path / "missing")
    assert env_module.cpu_model() == (platform.processor() or platform.machine() or "unknown")
