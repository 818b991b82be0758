"""The fused capture hook against output_hidden_states, the reference oracle."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mlr.modules import decoder_layers
from tiny_models import padded_batch, tiny_model

from mlr_kernels.capture import LastTokenCapture, last_token_index

LENGTHS = [7, 3, 5, 1]
GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def final_norm(model):
    return model.transformer.ln_f if hasattr(model, "transformer") else model.model.norm


def reference_rows(model, ids, mask, layers):
    """output_hidden_states at each layer's last real token; hidden_states[i + 1] is layer i's
    output, except the last entry, which HF returns after the final norm."""
    hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    rows = torch.arange(ids.shape[0])
    return [hidden[i + 1][rows, last_token_index(mask)] for i in layers]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_last_token_equals_output_hidden_states(kind, padding, dtype, grad_mode):
    model = tiny_model(kind).to(dtype)
    ids, mask = padded_batch(LENGTHS, padding)
    layers = [2, 0, 1]  # buffer rows follow the requested order
    with GRAD_MODES[grad_mode]():
        reference = reference_rows(model, ids, mask, layers)
        with LastTokenCapture(decoder_layers(model), layers, attention_mask=mask) as capture:
            model(input_ids=ids, attention_mask=mask)
        final = final_norm(model)(capture.buffer[0])
    assert capture.buffer.shape == (3, len(LENGTHS), model.config.hidden_size)
    assert capture.buffer.dtype == dtype
    assert torch.equal(final, reference[0])  # layer 2 is the last: compare after the final norm
    assert torch.equal(capture.buffer[1], reference[1])
    assert torch.equal(capture.buffer[2], reference[2])


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_masked_mean(dtype, tolerance):
    model = tiny_model("llama").to(dtype)
    ids, mask = padded_batch(LENGTHS, "left")
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        with LastTokenCapture(decoder_layers(model), [0, 1], attention_mask=mask,
                              mode="mean") as capture:
            model(input_ids=ids, attention_mask=mask)
    weights = mask.unsqueeze(-1).float()
    for row, layer in enumerate([0, 1]):
        expected = (hidden[layer + 1].float() * weights).sum(1) / weights.sum(1)
        torch.testing.assert_close(capture.buffer[row].float(), expected, atol=tolerance,
                                   rtol=tolerance)


def test_early_stop_skips_deeper_layers_and_head():
    model = tiny_model("llama", layers=4)
    ids, mask = padded_batch(LENGTHS)
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
               for i, layer in enumerate(decoder_layers(model))]
    handles.append(model.lm_head.register_forward_hook(lambda m, a, o: ran.append("head")))
    with torch.no_grad():
        with LastTokenCapture(decoder_layers(model), [1], attention_mask=mask) as capture:
            model(input_ids=ids, attention_mask=mask)
        assert ran == [0, 1]
        ran.clear()
        with LastTokenCapture(decoder_layers(model), [1], attention_mask=mask,
                              stop_early=False) as full:
            logits = model(input_ids=ids, attention_mask=mask).logits
    assert ran == [0, 1, 2, 3, "head"]
    assert logits.shape[:2] == ids.shape
    assert torch.equal(capture.buffer, full.buffer)
    for handle in handles:
        handle.remove()


def test_hooks_removed_and_other_errors_propagate():
    model = tiny_model("llama")
    layers = decoder_layers(model)
    ids, mask = padded_batch(LENGTHS)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        with LastTokenCapture(layers, [2], attention_mask=mask):
            raise RuntimeError("boom")
    assert all(not layer._forward_hooks for layer in layers)
    with torch.no_grad(), LastTokenCapture(layers, [2], attention_mask=mask):
        model(input_ids=ids, attention_mask=mask)
    assert all(not layer._forward_hooks for layer in layers)


def test_reuses_given_buffer_and_needs_no_mask():
    model = tiny_model("gpt2")
    ids, _ = padded_batch([6, 6])
    out = torch.empty(2, 2, model.config.hidden_size)
    with torch.no_grad():
        with LastTokenCapture(decoder_layers(model), [0, 1], out=out) as capture:
            model(input_ids=ids)
        reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert capture.buffer is out
    assert torch.equal(out[1], reference[2][:, -1])


def test_buffer_size_does_not_grow_with_sequence_length():
    model = tiny_model("llama")
    sizes = []
    for length in (4, 64):
        ids, mask = padded_batch([length, length])
        with torch.no_grad(), LastTokenCapture(decoder_layers(model), [0, 2],
                                               attention_mask=mask) as capture:
            model(input_ids=ids, attention_mask=mask)
        sizes.append(capture.buffer.numel())
    assert sizes == [2 * 2 * model.config.hidden_size] * 2


@pytest.mark.parametrize("indices,mode,message", [
    ([], "last", "empty"), ([1, 1], "last", "duplicates"), ([5], "last", "out of range"),
    ([0], "max", "mode"),
])
def test_rejects_bad_arguments(indices, mode, message):
    with pytest.raises(ValueError, match=message):
        LastTokenCapture(decoder_layers(tiny_model("llama")), indices, mode=mode)


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 3, 3, 1]


def test_mlr_kernels_capture_does_not_import_transformers():
    code = "import sys, mlr_kernels.capture; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
