"""Timing one optimizer step on the CPU or a GPU, and the bandwidth ceilings to compare it with.

On a GPU a step has two costs that must not be mixed: the device's work, and the host's work of
checking and launching it. :class:`StepTimer` keeps the stream busy with a sleep kernel queued
before the start event, longer than the host needs to queue the step, so the events time the
device's work alone, and it times the host's call of ``step()`` with a wall clock meanwhile. On the
CPU the two are one, the wall time of the call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    """One call: device milliseconds and host milliseconds (equal on the CPU); ``host_bound``
    when the host took longer than the sleep that was to hide it, so the device time may include
    idle gaps."""

    device_ms: float
    host_ms: float
    host_bound: bool = False


class StepTimer:
    """Times zero-argument callables on ``device`` (``"cpu"`` or a CUDA device)."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._cycles_per_ms = self._calibrate_sleep() if self.cuda else 0.0

    def _calibrate_sleep(self) -> float:
        """Clock cycles of ``torch.cuda._sleep`` per millisecond on this GPU."""
        cycles = 10_000_000
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)  # first call loads the kernel
        torch.cuda.synchronize()
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        return cycles / start.elapsed_time(end)

    def __call__(self, fn: Callable[[], None], host_ms: float = 0.0) -> Timing:
        """Time one call of ``fn``; on a GPU the sleep before it lasts ``2 * host_ms + 1`` ms,
        ``host_ms`` being what an earlier call of ``fn`` took the host."""
        if not self.cuda:
            start = time.perf_counter()
            fn()
            elapsed = (time.perf_counter() - start) * 1e3
            return Timing(elapsed, elapsed)
        covered = 2 * host_ms + 1.0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(int(covered * self._cycles_per_ms))
        start.record()
        host_start = time.perf_counter()
        fn()
        elapsed = (time.perf_counter() - host_start) * 1e3
        end.record()
        end.synchronize()
        return Timing(start.elapsed_time(end), elapsed, host_bound=elapsed > covered)


def median_timing(timings: list[Timing]) -> Timing:
    """Medians of the device and host times; host-bound if any call was."""
    return Timing(statistics.median(t.device_ms for t in timings),
                  statistics.median(t.host_ms for t in timings),
                  any(t.host_bound for t in timings))


def stream_ceiling(numel: int, device: str) -> Callable[[], None]:
    """fp32 AdamW's traffic with no math (4 float32 streams read, 3 written: 28 bytes per element)
    over ``numel`` elements, by the kernel backend of ``device``."""
    gen = torch.Generator(device=device).manual_seed(1)
    a, b, c, d = (torch.randn(numel, generator=gen, device=device) for _ in range(4))
    if torch.device(device).type == "cpu":
        from mlr_kernels.backends import cpu as backend
    else:
        from mlr_kernels.backends import cuda as backend
    return lambda: backend.stream_4r3w(a, b, c, d)


def copy_ceiling(numel: int, device: str) -> Callable[[], None]:
    """A copy of 14 bytes per element into another buffer: 28 bytes moved per element."""
    gen = torch.Generator(device=device).manual_seed(2)
    src = torch.randn(numel * 14 // 4, generator=gen, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def launches_per_step(step: Callable[[], None]) -> int:
    """GPU work items (kernels, copies, memsets) one call of ``step`` issues, from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)
