"""Host-to-device copies that never make the host wait for the device.

A copy from pageable host memory synchronizes: CUDA first waits for everything queued on the
stream, so a step that wrote its learning rates that way would hold the host until the backward
is done. :class:`Staging` copies through page-locked (pinned) buffers instead, which the copy
engine reads asynchronously. A buffer is written by the host only once the copy that last read it
has finished, which a CUDA event recorded after that copy says (queried, not waited on): while
every buffer is still being read, another one is made, up to ``MAX_BUFFERS`` (a buffer is 96 bytes
per segment); only then does the host wait for the oldest: it is that many uploads ahead of the
device, further than CUDA's launch queue usually lets it run, and the wait costs it nothing.

On a CPU "device" (tests stand CPU tensors in for the device to audit what a step issues) the
buffers are plain tensors and copies are immediate.
"""

from __future__ import annotations

from collections import deque

import torch

MAX_BUFFERS = 64


class Staging:
    """Copies of one host tensor's contents to device tensors of its size, in stream order.

    Args:
        like: the host (CPU) tensor whose contents will be copied; the buffers take its shape
            and dtype.
        device: where the destination lives.
    """

    def __init__(self, like: torch.Tensor, device: torch.device) -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._shape, self._dtype = like.shape, like.dtype
        self._free: list[torch.Tensor] = []
        self._in_flight: deque[tuple[torch.Tensor, torch.cuda.Event | None]] = deque()
        self.buffers_made = 0

    def copy(self, source: torch.Tensor, destination: torch.Tensor) -> None:
        """Queue ``destination.copy_(source)`` on the current stream of ``destination``'s device
        with ``source`` as it is now: the host may write ``source`` again as soon as this returns."""
        buffer = self._take()
        buffer.copy_(source)
        destination.copy_(buffer, non_blocking=True)
        event = None
        if self._cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        self._in_flight.append((buffer, event))

    def _take(self) -> torch.Tensor:
        """A buffer no queued copy still reads."""
        while self._in_flight and (self._in_flight[0][1] is None or self._in_flight[0][1].query()):
            self._free.append(self._in_flight.popleft()[0])
        if self._free:
            return self._free.pop()
        if self.buffers_made >= MAX_BUFFERS:
            buffer, event = self._in_flight.popleft()
            event.synchronize()  # the host is MAX_BUFFERS uploads ahead of the device
            return buffer
        self.buffers_made += 1
        return torch.empty(self._shape, dtype=self._dtype, pin_memory=self._cuda)
