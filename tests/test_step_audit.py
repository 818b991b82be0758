"""What a steady-state ``MLRAdamW.step()`` asks of the device, audited on the CPU.

On a GPU a step must never make the host wait for the device: no ``.item()``, no copy from
pageable host memory, no tensor built from host data on the device. Here CPU tensors stand in for
the device (segment tables staged as on a GPU: a host copy, uploaded through the staging buffers)
and every operator the step dispatches is recorded with a ``TorchDispatchMode``, in the setting
that used to sync every step: a scheduler changing every group's lr, gradients re-allocated by
``zero_grad()`` and a backward, one group per module. tests/test_optimizer_cuda.py checks the same
on a GPU with ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mlr_kernels import MLRAdamW, flat, segments
from tests.optim_cases import forward, make_model

# Every test runs with the per-step reads in C++ and in Python (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_host_read_path")

# Operators that only make views (no data moves), and the profiler's marks around every
# optimizer step (host only).
NO_DEVICE_WORK = {"slice", "select", "view", "alias", "as_strided", "t", "detach", "reshape", "expand",
         "unsqueeze", "squeeze", "_record_function_enter_new", "_record_function_exit"}


class Recorder(TorchDispatchMode):
    """Every operator dispatched, with its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func._schema.name.split("::")[-1], args))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def staged_tables(monkeypatch):
    """Segment tables kept and uploaded as on a GPU, on CPU tensors."""
    monkeypatch.setattr(flat, "SegmentTable", functools.partial(segments.SegmentTable, staged=True))


def scheduled_training(backend: str):
    """A model, MLRAdamW with a group per module, a scheduler, and a function running one
    training step (``zero_grad`` to None, backward, then the given step call)."""
    model = make_model(3)
    groups = [{"params": list(module.parameters()), "lr_mult": 0.5 + k} for k, module in
              enumerate(model.values())]
    opt = MLRAdamW(groups, lr=1e-2, backend=backend)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    gen = torch.Generator().manual_seed(0)

    def train_step(step):
        opt.zero_grad()  # set_to_none: the next backward allocates new gradients
        forward(model, torch.randn(4, 7, generator=gen)).pow(2).mean().backward()
        step()
        schedule.step()

    return opt, train_step


@pytest.mark.parametrize("backend", ["cpu"])
def test_a_steady_state_scheduled_step_issues_one_upload_and_the_step_count(staged_tables, backend):
    opt, train_step = scheduled_training(backend)
    for _ in range(3):
        train_step(opt.step)
    recorder = Recorder()

    def audited_step():
        with recorder:
            opt.step()

    train_step(audited_step)
    staging = [b.table._staging for b in opt.buckets]
    buffers = {id(t) for s in staging for t in (*s._free, *(b for b, _ in s._in_flight))}
    ops = Counter(name for name, _ in recorder.calls if name not in NO_DEVICE_WORK)
    # The host copy into a staging buffer, the buffer into the device table, the step count.
    assert ops == Counter({"copy_": 2, "add_": 1}), ops
    copies = [args for name, args in recorder.calls if name == "copy_"]
    assert id(copies[0][0]) in buffers and id(copies[1][1]) in buffers, (
        "the device table must be copied from a staging buffer")
    assert copies[1][0].data_ptr() == opt.buckets[0].table.hyper.data_ptr(), "one copy of the whole table"


def test_the_audit_sees_a_host_sync(staged_tables):
    """The recorder is not blind: an ``.item()`` and a tensor built from host data show."""
    recorder = Recorder()
    with recorder:
        torch.ones(2).sum().item()
        torch.tensor([1.0, 2.0])
    names = {name for name, _ in recorder.calls}
    assert "_local_scalar_dense" in names and "lift_fresh" in names


def test_with_nothing_changed_a_step_uploads_nothing(staged_tables):
    """Same gradients and learning rates as the last step: no copy at all."""
    opt, train_step = scheduled_training("cpu")
    for _ in range(2):
        train_step(opt.step)
    opt.step()  # the scheduler's new lr is written
    recorder = Recorder()
    with recorder:
        opt.step()
    ops = Counter(name for name, _ in recorder.calls if name not in NO_DEVICE_WORK)
    assert ops == Counter({"add_": 1}), ops


def test_staged_tables_train_as_unstaged_ones(staged_tables, monkeypatch):
    """The upload path changes nothing in the result: bit-identical weights."""
    results = []
    for staged in (True, False):
        monkeypatch.setattr(flat, "SegmentTable", functools.partial(segments.SegmentTable, staged=staged))
        opt, train_step = scheduled_training("cpu")
        for _ in range(4):
            train_step(opt.step)
        results.append([p.detach().clone() for g in opt.param_groups for p in g["params"]])
    for a, b in zip(*results):
        assert torch.equal(a, b)
