"""The segment table every AdamW kernel reads.

A *segment* is one parameter. Its optimizer state lives in flat float32 buffers (``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq`` and, for a bfloat16/float16 parameter, the float32 master
weights), one run of elements per segment that starts on an ``ALIGN_ELEMENTS`` boundary. The
parameter and its gradient stay where user code keeps them: the kernels reach them through the
segment's row of ``pointers``. So one launch updates any number of parameters and param groups,
and whatever tensor user code has put in ``.data`` or ``.grad`` is the one the kernel reads.

``hyper`` (float64, ``[S, NUM_HYPER_COLUMNS]``, on the buffers' device) holds what the update needs:

    hyper[s, LR]            effective learning rate = group lr * lr multiplier
    hyper[s, WEIGHT_DECAY]  effective decoupled decay = group weight_decay * wd_mult
    hyper[s, BETA1], hyper[s, BETA2], hyper[s, EPS]
    hyper[s, ACTIVE]        1.0 if the parameter has a gradient this step, else 0.0 (left untouched)
    hyper[s, MAXIMIZE]      1.0 to ascend instead of descend
    hyper[s, AMSGRAD]       1.0 to use the running max of exp_avg_sq

``pointers`` (int64, ``[S, NUM_POINTER_COLUMNS]``, on the device) says where the segment is:

    pointers[s, PARAM_PTR]  address of the parameter's NUMEL elements, in the order they lie in
                            memory (contiguous, or dense in another order such as channels_last)
    pointers[s, GRAD_PTR]   address of its gradient (same dtype and length, same order), 0 when
                            it has none
    pointers[s, OFFSET]     where its state starts in the flat buffers
    pointers[s, NUMEL]      its number of elements
    pointers[s, STREAM]     the stream of random bits its stochastic rounding draws from
                            (:func:`mlr_kernels.rounding.stream_of`; read only with bf16 state)

``steps`` (float64, ``[S]``, on the device) is each segment's step count, this step included.

The host writes ``hyper`` and ``pointers``, the device counts ``steps``. The host writes go to a
host copy of the two tables (:attr:`SegmentTable.hyper_rows`, :attr:`SegmentTable.pointer_rows`:
numpy arrays, so a step writes them without a torch call); :meth:`SegmentTable.upload` then makes
the device's tables equal to it. For a CPU table the two are the same memory. For a GPU table it is
one asynchronous copy of both tables through a pinned buffer (:mod:`mlr_kernels.staging`), issued
only when something changed: a step never makes the host wait for the device. ``steps`` is counted
on the device (from ACTIVE and GradScaler's ``found_inf``), as torch's fused AdamW counts its
``state_steps``, so that neither a skipped step nor a captured CUDA graph needs the host.

Kernels walk *tiles*: rows ``(segment, start, end)`` of an int64 ``[T, 3]`` tensor in flat-state
coordinates, each a run of at most ``tile_size`` elements inside one segment, so a block or thread
finds its row with one lookup and never searches. Element ``i`` of a tile is state element ``i``
and parameter element ``i - OFFSET`` (in memory order: AdamW is elementwise, so any order in which
parameter, gradient and state agree will do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mlr_kernels.staging import Staging

LR, WEIGHT_DECAY, BETA1, BETA2, EPS, ACTIVE, MAXIMIZE, AMSGRAD = range(8)
NUM_HYPER_COLUMNS = 8
PARAM_PTR, GRAD_PTR, OFFSET, NUMEL, STREAM = range(5)
NUM_POINTER_COLUMNS = 5
# Both tables of a segment are 8-byte words: one block holds them, copied to the device at once.
ROW_WORDS = NUM_HYPER_COLUMNS + NUM_POINTER_COLUMNS

# 16 elements = 64 bytes of fp32 (a cache line): a 16-byte vector of state never straddles one.
ALIGN_ELEMENTS = 16

# The widest access the GPU kernels make.
VECTOR_BYTES = 16

# The param and state dtype codes the compiled kernels take (csrc/segment_table.h, ParamDtype and
# StateDtype).
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
STATE_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


def aligned(n: int, align: int = ALIGN_ELEMENTS) -> int:
    """Round ``n`` up to a multiple of ``align``."""
    return (n + align - 1) // align * align


def segment_offsets(numels: Sequence[int]) -> tuple[list[int], int]:
    """Start offset of each segment in a flat state buffer, and the buffer's padded length."""
    offsets, total = [], 0
    for n in numels:
        offsets.append(total)
        total += aligned(n)
    return offsets, max(total, ALIGN_ELEMENTS)


def make_tiles(offsets: Sequence[int], numels: Sequence[int], tile_size: int,
               segments: Sequence[int] | None = None) -> torch.Tensor:
    """Split segments (all, or those listed in ``segments``) into runs of at most ``tile_size``
    elements: int64 ``[T, 3]`` rows of ``(segment, start, end)`` in flat-state coordinates.
    ``tile_size`` must be a multiple of ``ALIGN_ELEMENTS`` so that every tile starts aligned."""
    if tile_size <= 0 or tile_size % ALIGN_ELEMENTS:
        raise ValueError(f"tile_size must be a positive multiple of {ALIGN_ELEMENTS}, got {tile_size}")
    rows = []
    for seg in range(len(numels)) if segments is None else segments:
        start, n = offsets[seg], numels[seg]
        for lo in range(0, n, tile_size):
            rows.append((seg, start + lo, start + min(lo + tile_size, n)))
    if not rows:
        return torch.empty((0, 3), dtype=torch.int64)
    return torch.tensor(rows, dtype=torch.int64)


class SegmentTable:
    """The per-segment rows of one flat state layout: ``hyper``, ``pointers``, ``steps`` and tile
    lists (see the module docstring).

    Args:
        numels: elements of each segment, in order.
        dtype: the parameters' (and gradients') dtype: float32, bfloat16 or float16.
        device: where the parameters, the state buffers and the tables live.
        staged: keep a host copy of the tables and upload it (default: for non-CPU devices).
            ``True`` on a CPU device stands CPU tensors in for a device's, for tests.

    Attributes:
        hyper, pointers, steps: the device tables the kernels read (``[S, 8]`` float64, ``[S, 4]``
            int64, ``[S]`` float64).
        hyper_rows, pointer_rows: their host copies (numpy), which the owner writes; then
            :meth:`mark_written` and, before a launch, :meth:`upload`.
        params, grads: the tensors the ``pointers`` rows were last written from (:meth:`point_at`);
            keeping them here keeps that memory alive until the step is done (:meth:`release`),
            and the reference backend reads them directly.
        vector_aligned: every parameter and gradient address is a multiple of ``VECTOR_BYTES``,
            so the GPU kernels may move whole chunks with 16-byte accesses.

    The optimizer fills the table, a :class:`~mlr_kernels.flat.FlatBucket` owns it, the kernels
    read it.
    """

    def __init__(self, numels: Sequence[int], dtype: torch.dtype, device: torch.device | str,
                 staged: bool | None = None) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"segments must be float32, bfloat16 or float16, got {dtype}")
        self.numels = list(numels)
        self.dtype = dtype
        self.device = torch.device(device)
        self.staged = self.device.type != "cpu" if staged is None else staged
        self.offsets, self.length = segment_offsets(self.numels)
        count = len(self.numels)
        self._capacity = 0
        self._grow(count)
        self.pointer_rows[:count, OFFSET] = self.offsets
        self.pointer_rows[:count, NUMEL] = self.numels
        self._written = True
        self.params: list[torch.Tensor | None] = [None] * count
        self.grads: list[torch.Tensor | None] = [None] * count
        self._param_ptrs: list[int] = []
        self._grad_ptrs: list[int] = []
        self.vector_aligned = True
        self._active: list[bool] | None = None
        self._tiles: dict[tuple[int, tuple[int, ...] | None], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.numels)

    # --------------------------------------------------------------------------- storage
    def _grow(self, count: int) -> None:
        """Room for ``count`` rows (half as many again as now at least, so that rows appended one
        at a time copy O(total) in all), keeping the rows and step counts there are."""
        old = self._capacity
        if count <= old and old:
            self._views(count)
            return
        capacity = max(count, old * 3 // 2, 1)
        host = torch.zeros(capacity * ROW_WORDS, dtype=torch.int64)
        device_rows = torch.zeros_like(host, device=self.device) if self.staged else host
        steps = torch.zeros(capacity, dtype=torch.float64, device=self.device)
        if old:
            words = host.numpy()
            words[: old * NUM_HYPER_COLUMNS] = self._host.numpy()[: old * NUM_HYPER_COLUMNS]
            words[capacity * NUM_HYPER_COLUMNS : capacity * NUM_HYPER_COLUMNS + old * NUM_POINTER_COLUMNS] = (
                self._host.numpy()[old * NUM_HYPER_COLUMNS :])
            steps[:old] = self._steps[:old]
        self._host, self._device_rows, self._steps, self._capacity = host, device_rows, steps, capacity
        self._staging = Staging(host, self.device) if self.staged else None
        self._written = True
        self._views(count)

    def _views(self, count: int) -> None:
        """Point the table attributes at the first ``count`` rows of the storage."""
        split = self._capacity * NUM_HYPER_COLUMNS
        words = self._host.numpy()
        self.hyper_rows = words[:split].view(np.float64).reshape(self._capacity, NUM_HYPER_COLUMNS)[:count]
        self.pointer_rows = words[split:].reshape(self._capacity, NUM_POINTER_COLUMNS)[:count]
        device = self._device_rows
        self.hyper = device[:split].view(torch.float64).view(self._capacity, NUM_HYPER_COLUMNS)[:count]
        self.pointers = device[split:].view(self._capacity, NUM_POINTER_COLUMNS)[:count]
        self.steps = self._steps[:count]

    def mark_written(self) -> None:
        """The host copy changed: the next :meth:`upload` copies it to the device."""
        self._written = True

    def upload(self) -> None:
        """Make the device tables equal to the host copy, if it changed since the last upload:
        nothing for a CPU table, else one asynchronous copy through a pinned buffer.

        Raises:
            RuntimeError: inside a CUDA-graph capture, where a copy from a host buffer would be
                replayed from whatever that buffer holds at replay time."""
        if not self._written:
            return
        if self._staging is not None:
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    "MLRAdamW.step() is being captured in a CUDA graph, but since its last step "
                    "outside the capture the segment table changed (gradients re-allocated, a "
                    "parameter's .data replaced, group values or multipliers edited): a replay "
                    "could not follow it. Run one step outside the capture with the same "
                    "gradient tensors and group values first (see docs/optimizer_contract.md)")
            self._staging.copy(self._host, self._device_rows)
        self._written = False

    @property
    def used_length(self) -> int:
        """State elements the segments need: the end of the last one (padding included)."""
        return max(self._end(), ALIGN_ELEMENTS)

    def _end(self) -> int:
        return self.offsets[-1] + aligned(self.numels[-1]) if self.numels else 0

    def append(self, numels: Sequence[int]) -> None:
        """Add segments after the last one, their state after its state. Existing rows keep their
        values; the new ones are zero. When the state no longer fits, ``length`` grows by half at
        least (the owner then re-allocates its buffers to it), and so do the rows, so that
        segments appended one at a time copy O(total) elements in all."""
        numels = list(numels)
        start, count = len(self), len(self) + len(numels)
        offsets, end = segment_offsets(numels)
        base = self._end()
        if base + end > self.length:
            self.length = max(base + end, self.length * 3 // 2)
        self._grow(count)
        self.numels += numels
        self.offsets += [base + o for o in offsets]
        self.pointer_rows[start:, OFFSET] = self.offsets[start:]
        self.pointer_rows[start:, NUMEL] = self.numels[start:]
        self._written = True
        self.params += [None] * len(numels)
        self.grads += [None] * len(numels)
        self._param_ptrs, self._grad_ptrs, self._active = [], [], None  # rewritten at the next step
        whole = {key: tiles for key, tiles in self._tiles.items() if key[1] is None}
        self._tiles = {key: torch.cat([tiles, make_tiles(self.offsets, self.numels, key[0],
                                                         range(start, count)).to(self.device)])
                       for key, tiles in whole.items()}

    def fit(self) -> None:
        """Shrink ``length`` to what the segments use (after appends left room to spare)."""
        self.length = self.used_length

    # --------------------------------------------------------------------------- per step
    def point_at(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
                 param_ptrs: Sequence[int], grad_ptrs: Sequence[int],
                 addresses: np.ndarray | None = None) -> None:
        """Make every segment's row point at ``params[s]`` and ``grads[s]`` (None: no gradient),
        whose addresses are ``param_ptrs[s]`` and ``grad_ptrs[s]`` (0 for None).

        The caller has checked that each is a dense tensor of the table's dtype and device with
        the segment's number of elements, each gradient in its parameter's memory order: the
        kernels trust these addresses. The host copy is written only when an address changed. The
        lists are kept as given: the caller never changes one it has passed (it makes new ones).
        ``addresses``: the same addresses as int64 ``[segments, 2]`` (a gradient's -1 for None),
        when the caller has them so (the C++ reads of :mod:`mlr_kernels.host_reads`): written
        from there, which saves converting thousands of Python ints."""
        moved = False
        for column, now, seen in ((PARAM_PTR, param_ptrs, self._param_ptrs),
                                  (GRAD_PTR, grad_ptrs, self._grad_ptrs)):
            if now != seen:
                if addresses is None:
                    self.pointer_rows[:, column] = now
                else:
                    np.maximum(addresses[:, column - PARAM_PTR], 0, out=self.pointer_rows[:, column])
                moved = True
        if moved:
            self._param_ptrs, self._grad_ptrs = param_ptrs, grad_ptrs
            addresses = self.pointer_rows[:, PARAM_PTR : GRAD_PTR + 1]
            self.vector_aligned = not (addresses & (VECTOR_BYTES - 1)).any()
            self._written = True
        self.params, self.grads = params, grads

    def release(self) -> None:
        """Drop the references to the tensors the rows point at (after a step): a gradient that
        user code sets to None must be freed before the next backward allocates its successor.
        The rows stay, to be compared with the next :meth:`point_at`, never to be read."""
        count = len(self.numels)
        self.params, self.grads = [None] * count, [None] * count

    def set_streams(self, start: int, streams: Sequence[int]) -> None:
        """Write the STREAM column of the segments from ``start`` on."""
        self.pointer_rows[start : start + len(streams), STREAM] = streams
        self._written = True

    def set_active(self, active: list[bool]) -> None:
        """Write the ACTIVE column, only when it changed since the last call."""
        if active != self._active:
            self.hyper_rows[:, ACTIVE] = active
            self._active = active
            self._written = True

    def tiles(self, tile_size: int, segments: Sequence[int] | None = None) -> torch.Tensor:
        """The tile list of all segments, or of ``segments`` only, for a backend's tile size; built
        once and kept on the device."""
        key = (tile_size, None if segments is None else tuple(segments))
        if key not in self._tiles:
            self._tiles[key] = make_tiles(self.offsets, self.numels, tile_size, segments).to(self.device)
        return self._tiles[key]
