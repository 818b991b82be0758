"""Fused activation capture: one token's hidden state (or a masked mean) at chosen decoder layers.

``LastTokenCapture`` registers a forward hook on each requested decoder layer. Each hook does one
gather (``mode="last"``) or one batched matmul with the normalized mask (``mode="mean"``) straight
into its row of a single preallocated ``[layers, batch, hidden]`` buffer, so nothing of size
``batch × sequence × hidden`` outlives the layer that produced it: capture memory grows with
layers × batch × hidden, never with sequence length. Compare ``output_hidden_states=True``, which
keeps every layer's full ``[batch, seq, hidden]`` output alive until the forward returns.

The decoder layers come in as a plain list of modules, so this file knows nothing about any model
library (``mlr.modules.decoder_layers`` finds them for Hugging Face models)::

    with LastTokenCapture(layers, [4, 8], attention_mask=mask) as capture:
        model(input_ids=ids, attention_mask=mask)
    features = capture.buffer            # [2, batch, hidden]: layer 4 then layer 8

**Early stop.** With ``stop_early=True`` (the default) the hook on the deepest requested layer
raises the private ``_StopForward`` exception once its row is written; it unwinds the rest of the
forward (deeper layers, final norm, LM head are never computed) and ``__exit__`` swallows it. So
the ``with`` block must hold exactly one forward, as its last statement: code after the forward
inside the block does not run when the forward is cut short. Any other exception propagates.

Works under ``torch.no_grad`` and ``torch.inference_mode``, in any floating dtype; the buffer takes
the hidden states' dtype and device unless ``out`` is given. Captured values are detached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

CaptureMode = Literal["last", "mean"]


class _StopForward(Exception):
    """Raised by the deepest capture hook to cut the forward short; caught in ``__exit__``."""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last 1 in each row of a ``[batch, seq]`` mask: the last real token under
    either left or right padding. int64 ``[batch]``."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.to(torch.bool) * positions).argmax(dim=1)


class LastTokenCapture:
    """Capture the last non-padding token's hidden state (``mode="last"``) or the mask-weighted
    mean over real tokens (``mode="mean"``) at ``layer_indices`` of ``layers`` during one forward.

    ``layers`` is the model's decoder layers in order; ``layer_indices`` the 0-based layers to
    capture, in the order the buffer's rows take. ``attention_mask`` is the ``[batch, seq]`` 0/1
    mask of the forward (``None``: every position is real). ``out`` optionally supplies the
    ``[len(layer_indices), batch, hidden]`` buffer to write into, e.g. to reuse it across batches.

    Raises:
        ValueError: at construction, for empty, duplicate or out-of-range ``layer_indices``, an
            unknown ``mode`` or an ``attention_mask`` that is not 2-D; during the forward, for an
            ``out`` that is not ``[len(layer_indices), batch, hidden]``.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        layer_indices: Sequence[int],
        attention_mask: torch.Tensor | None = None,
        mode: CaptureMode = "last",
        stop_early: bool = True,
        out: torch.Tensor | None = None,
    ) -> None:
        indices = [int(i) for i in layer_indices]
        if not indices:
            raise ValueError("layer_indices is empty")
        if len(set(indices)) != len(indices):
            raise ValueError(f"layer_indices has duplicates: {indices}")
        if not all(0 <= i < len(layers) for i in indices):
            raise ValueError(f"layer_indices {indices} out of range for {len(layers)} layers")
        if mode not in ("last", "mean"):
            raise ValueError(f"mode must be 'last' or 'mean', got {mode!r}")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be [batch, seq], got {tuple(attention_mask.shape)}")
        self.layers = list(layers)
        self.layer_indices = indices
        self.attention_mask = attention_mask
        self.mode = mode
        self.stop_early = stop_early
        self.buffer = out
        self._deepest = max(indices)
        self._selector: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LastTokenCapture:
        self._selector = None
        for row, index in enumerate(self.layer_indices):
            handle = self.layers[index].register_forward_hook(self._make_hook(row, index))
            self._handles.append(handle)
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return exc_type is _StopForward

    def _make_hook(self, row: int, index: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            self._write(row, hidden.detach())
            if self.stop_early and index == self._deepest:
                raise _StopForward

        return hook

    def _write(self, row: int, hidden: torch.Tensor) -> None:
        batch, seq, width = hidden.shape
        if self.buffer is None:
            self.buffer = hidden.new_empty((len(self.layer_indices), batch, width))
        elif self.buffer.shape != (len(self.layer_indices), batch, width):
            raise ValueError(f"out has shape {tuple(self.buffer.shape)}, expected "
                             f"{(len(self.layer_indices), batch, width)}")
        if self._selector is None:
            self._selector = self._build_selector(batch, seq, width, hidden)
        target = self.buffer[row].unsqueeze(1)  # [batch, 1, hidden] view of the buffer row
        if self.mode == "last":
            torch.gather(hidden, 1, self._selector, out=target)
        else:
            torch.bmm(self._selector, hidden, out=target)

    def _build_selector(self, batch: int, seq: int, width: int, hidden: torch.Tensor) -> torch.Tensor:
        """What every hook reuses: the gather index ``[batch, 1, hidden]`` for ``last``, the
        normalized mask ``[batch, 1, seq]`` in the hidden dtype for ``mean``."""
        mask = self.attention_mask
        if mask is None:
            mask = torch.ones(batch, seq, dtype=torch.int64, device=hidden.device)
        mask = mask.to(hidden.device)
        if self.mode == "last":
            return last_token_index(mask).view(batch, 1, 1).expand(batch, 1, width)
        weights = mask.to(torch.float32)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        return weights.to(hidden.dtype).unsqueeze(1)
