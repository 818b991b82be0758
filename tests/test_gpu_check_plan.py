"""The prepared GPU run (bench/gpu_check.sh) checks its own plan on any machine: the step caps fit
the 7-minute budget, its outputs fit the device tool's 8 files, and the scripts, workloads and GPU
tests it names exist. A plan that would fail on the GPU, where minutes are scarce, fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_passes():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "caps add up to" in result.stdout and "tests collected" in result.stdout, result.stdout


def test_gpu_check_dry_run_refuses_a_plan_over_budget(tmp_path):
    script = (ROOT / "bench" / "gpu_check.sh").read_text().replace("BUDGET_S=420", "BUDGET_S=60")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_check.sh").write_text(script)
    result = subprocess.run(["bash", str(tmp_path / "bench" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "over budget" in result.stdout, result.stdout
