"""Cached partial forwards: record what every decoder layer up to the probe layer received, once,
then recompute the probe layer's last-token features starting from any layer.

A perturbation of a module in layer ``j`` leaves layers ``0..j-1`` untouched, so their outputs (the
inputs of layer ``j``) are reused and only layers ``j..probe_layer`` run again. The record is made
by a forward pre-hook registered ``with_kwargs=True`` on each layer, which keeps the exact positional
and keyword arguments the model passed (hidden states, attention mask, rotary position embeddings,
position ids, ...), so replaying a layer is calling it with the same arguments and the hidden states
swapped for the replayed ones. Nothing is copied: the record holds references to tensors the
forward made (memory: ``probe_layer + 1`` hidden-state tensors per batch).

``layer_forwards`` counts layer computations over the whole batch list, the unit the analysis
reports its cost in (a full forward is ``len(layers)`` of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlr.features import Batch, forward
from mlr.modules import decoder_layers
from mlr_kernels.capture import LastTokenCapture, last_token_index


@dataclass(frozen=True)
class _LayerCall:
    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        """The hidden states the layer received (first positional, else ``hidden_states=``)."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> tuple[tuple, dict]:
        """The same call with other hidden states."""
        if self.args:
            return (hidden, *self.args[1:]), self.kwargs
        return self.args, {**self.kwargs, "hidden_states": hidden}


def _output_hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class LayerReplay:
    """Layer inputs of ``batches`` for layers ``0..probe_layer`` of ``model`` and the clean
    features at ``probe_layer``; ``features_from(j)`` recomputes them from layer ``j`` on, under
    whatever weights the model has at the time."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], probe_layer: int) -> None:
        self.layers = decoder_layers(model)
        if not 0 <= probe_layer < len(self.layers):
            raise ValueError(f"probe layer {probe_layer} out of range for {len(self.layers)} layers")
        self.batches = list(batches)
        self.probe_layer = probe_layer
        self.rows = sum(len(b.rows) for b in self.batches)
        self.layer_forwards = 0
        self._calls: list[list[_LayerCall]] = []
        self.clean_features = self._record(model)

    def _record(self, model: nn.Module) -> torch.Tensor:
        features = []
        with torch.inference_mode():
            for batch in self.batches:
                calls: list[_LayerCall] = []

                def keep(module, args, kwargs, calls=calls):
                    calls.append(_LayerCall(args, kwargs))

                handles = [layer.register_forward_pre_hook(keep, with_kwargs=True)
                           for layer in self.layers[: self.probe_layer + 1]]
                try:
                    with LastTokenCapture(self.layers, [self.probe_layer],
                                          attention_mask=batch.attention_mask) as capture:
                        forward(model, batch)
                finally:
                    for handle in handles:
                        handle.remove()
                self._calls.append(calls)
                features.append(capture.buffer[0])
        self.layer_forwards += self.probe_layer + 1
        return self._in_row_order(features)

    def features_from(self, start: int) -> torch.Tensor:
        """Probe-layer last-token features (float32 ``[rows, hidden]``, original row order) with
        layers ``start..probe_layer`` recomputed from the cached input of layer ``start``."""
        if not 0 <= start <= self.probe_layer:
            raise ValueError(f"start layer {start} is not in 0..{self.probe_layer}")
        features = []
        with torch.inference_mode():
            for batch, calls in zip(self.batches, self._calls):
                hidden = calls[start].hidden
                for index in range(start, self.probe_layer + 1):
                    args, kwargs = calls[index].with_hidden(hidden)
                    hidden = _output_hidden(self.layers[index](*args, **kwargs))
                last = last_token_index(batch.attention_mask)
                features.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        self.layer_forwards += self.probe_layer + 1 - start
        return self._in_row_order(features)

    def _in_row_order(self, per_batch: list[torch.Tensor]) -> torch.Tensor:
        out = torch.empty((self.rows, per_batch[0].shape[-1]))
        for batch, features in zip(self.batches, per_batch):
            out[batch.rows] = features.float().cpu()
        return out
