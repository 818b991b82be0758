"""pytest-benchmark suite: one optimizer step per round, MLRAdamW against torch.optim.AdamW.

    pytest bench/test_bench_optimizer.py --benchmark-only --benchmark-group-by=param:workload

Benchmarks are kept out of the test run (``testpaths = tests``); for the table with GB/s and the
in-run bandwidth ceiling use ``python bench/compare_optimizers.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_optimizers import group_dicts  # noqa: E402
from workloads import CPU_WORKLOADS, make_params  # noqa: E402

from mlr_kernels import MLRAdamW  # noqa: E402

VARIANTS = {
    "mlr": lambda groups: MLRAdamW(group_dicts(groups, 1e-3, True), backend="auto"),
    "torch-foreach": lambda groups: torch.optim.AdamW(group_dicts(groups, 1e-3, False), foreach=True),
    "torch-fused": lambda groups: torch.optim.AdamW(group_dicts(groups, 1e-3, False), fused=True),
}


@pytest.mark.parametrize("workload", ["lora", "small"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step(benchmark, workload, variant):
    optimizer = VARIANTS[variant](make_params(CPU_WORKLOADS[workload], "cpu", torch.float32))
    benchmark.extra_info["params"] = CPU_WORKLOADS[workload].numel
    benchmark(optimizer.step)
