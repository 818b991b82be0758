"""Find a causal LM's decoder layers and the seven module kinds ML-LR works on in each.

Module types: ``q, k, v, o`` (attention projections) and ``gate, up, down`` (MLP projections).

* Llama / Mistral / Qwen2 (``model.layers[i].self_attn.{q,k,v,o}_proj``, ``.mlp.{gate,up,down}_proj``).
* GPT-2 (``transformer.h[i]``): the fused ``attn.c_attn`` Conv1D is split into q, k and v as equal
  column slices of its weight; ``attn.c_proj`` is o, ``mlp.c_fc`` up, ``mlp.c_proj`` down; no gate.
* PEFT LoRA-wrapped versions of either: the ``base_model.model.`` prefix and ``base_layer``
  wrappers are peeled, so a module's *canonical name* (e.g. ``model.layers.3.self_attn.q_proj``)
  is the same whether or not the model carries adapters. A ``ModuleRef``'s weight is the frozen
  base weight.

The canonical name of a GPT-2 q/k/v slice is the fused module's name with the type in brackets,
``transformer.h.3.attn.c_attn[q]``; ``ModuleRef.module_name`` is the module that holds the weight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from mlr.errors import MlrInputError

MODULE_TYPES = ("q", "k", "v", "o", "gate", "up", "down")

_PEFT_PREFIX = "base_model.model."
_PEFT_WRAPPER = "base_layer"
_LORA_PARTS = frozenset({"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B",
                         "lora_dropout", "lora_magnitude_vector"})
_PARAMETER_SUFFIXES = frozenset({"weight", "bias"})

# Where the decoder layers live, relative to the unwrapped model (causal LM or bare backbone).
_LAYER_PATHS = ("model.layers", "transformer.h", "layers", "h")


@dataclass(frozen=True)
class _Slot:
    """Where one module type's weight lives inside a decoder layer: a submodule path and, for a
    fused projection, which of ``parts`` equal slices of its output features it owns."""

    path: str
    part: int = 0
    parts: int = 1


_LLAMA_LAYOUT = {
    "q": _Slot("self_attn.q_proj"), "k": _Slot("self_attn.k_proj"),
    "v": _Slot("self_attn.v_proj"), "o": _Slot("self_attn.o_proj"),
    "gate": _Slot("mlp.gate_proj"), "up": _Slot("mlp.up_proj"), "down": _Slot("mlp.down_proj"),
}
_GPT2_LAYOUT = {
    "q": _Slot("attn.c_attn", 0, 3), "k": _Slot("attn.c_attn", 1, 3),
    "v": _Slot("attn.c_attn", 2, 3), "o": _Slot("attn.c_proj"),
    "up": _Slot("mlp.c_fc"), "down": _Slot("mlp.c_proj"),
}
_LAYOUTS = (_LLAMA_LAYOUT, _GPT2_LAYOUT)


@dataclass(frozen=True)
class ModuleRef:
    """One perturbable / tunable module: its canonical name, type, 0-based decoder layer, and the
    part of a weight parameter it owns (the whole weight, or a column slice for fused q/k/v)."""

    name: str
    type: str
    layer: int
    module_name: str
    parameter_name: str
    parameter: nn.Parameter = field(repr=False, compare=False)
    out_dim: int = 0  # weight axis of output features: 0 for nn.Linear, 1 for GPT-2's Conv1D
    out_range: tuple[int, int] | None = None

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of ``tensor`` (the weight, or its gradient) that belongs to this module."""
        if self.out_range is None:
            return tensor
        start, stop = self.out_range
        return tensor.narrow(self.out_dim, start, stop - start)

    def weight(self) -> torch.Tensor:
        """A view of this module's weight; in-place edits change the model."""
        return self.view(self.parameter)

    @property
    def numel(self) -> int:
        return self.weight().numel()


def module_gradients(model: nn.Module, refs: Sequence[ModuleRef],
                     backward: Callable[[], None]) -> dict[str, torch.Tensor]:
    """Each of ``refs``' block of the gradient that ``backward()`` accumulates (float32, keyed by
    module name; zeros where it reaches no module), with gradients enabled on those weights only.
    Every parameter's ``requires_grad`` and ``grad`` are restored afterwards."""
    wanted = {id(ref.parameter) for ref in refs}
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in wanted)
            parameter.grad = None
        with torch.enable_grad():
            backward()
        return {ref.name: ref.view(ref.parameter.grad).detach().float().clone()
                if ref.parameter.grad is not None else torch.zeros_like(ref.weight().float())
                for ref in refs}
    finally:
        for parameter, flag in requires_grad.items():
            parameter.grad = None
            parameter.requires_grad_(flag)


def canonical_module_name(name: str) -> str:
    """The wrapper-free module name for a parameter or module name of a plain or PEFT LoRA model.

    ``base_model.model.model.layers.3.self_attn.q_proj.base_layer.weight``,
    ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight`` and
    ``model.layers.3.self_attn.q_proj`` all give ``model.layers.3.self_attn.q_proj``.
    """
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX):]
    kept: list[str] = []
    for part in name.split("."):
        if part in _LORA_PARTS:
            break
        if part != _PEFT_WRAPPER:
            kept.append(part)
    if kept and kept[-1] in _PARAMETER_SUFFIXES:
        kept.pop()
    return ".".join(kept)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a PEFT wrapper (the model itself when unwrapped)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _layers_path(model: nn.Module) -> str:
    for path in _LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path
    raise MlrInputError(f"{type(model).__name__} has no recognizable decoder layers "
                        f"(looked for {', '.join(_LAYER_PATHS)})")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers, in order (works through a PEFT wrapper)."""
    base = unwrap_model(model)
    return base.get_submodule(_layers_path(base))


def _peel(module: nn.Module) -> nn.Module:
    """The innermost module under LoRA ``base_layer`` wrappers."""
    while isinstance(getattr(module, _PEFT_WRAPPER, None), nn.Module):
        module = getattr(module, _PEFT_WRAPPER)
    return module


def _find(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return _peel(layer.get_submodule(path))
    except AttributeError:
        return None


def _layout(layer: nn.Module) -> dict[str, _Slot]:
    for layout in _LAYOUTS:
        if all(_find(layer, slot.path) is not None for slot in layout.values()):
            return layout
    raise MlrInputError(f"decoder layer {type(layer).__name__} has no recognizable q/k/v/o/mlp "
                        "projections (supported: Llama, Mistral, Qwen2, GPT-2 and LoRA-wrapped)")


def _output_dim(module: nn.Module) -> int:
    """Axis of the weight that indexes output features: 0 for nn.Linear, 1 for GPT-2's Conv1D."""
    return 1 if hasattr(module, "nf") else 0


def decoder_modules(model: nn.Module) -> list[ModuleRef]:
    """Every q, k, v, o, gate, up, down module of every decoder layer, ordered by layer then type.

    Raises ``MlrInputError`` when the model's layers or projections are not recognized.
    """
    base = unwrap_model(model)
    layers_path = _layers_path(base)
    layers = base.get_submodule(layers_path)
    layout = _layout(layers[0])
    parameter_names = {id(p): n for n, p in model.named_parameters()}
    refs = []
    for index, layer in enumerate(layers):
        for kind in MODULE_TYPES:
            slot = layout.get(kind)
            if slot is None:
                continue
            module = _find(layer, slot.path)
            module_name = f"{layers_path}.{index}.{slot.path}"
            out_dim = _output_dim(module)
            width = module.weight.shape[out_dim] // slot.parts
            fused = slot.parts > 1
            refs.append(ModuleRef(
                name=f"{module_name}[{kind}]" if fused else module_name,
                type=kind,
                layer=index,
                module_name=module_name,
                parameter_name=parameter_names[id(module.weight)],
                parameter=module.weight,
                out_dim=out_dim,
                out_range=(slot.part * width, (slot.part + 1) * width) if fused else None,
            ))
    return refs
