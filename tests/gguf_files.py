"""Tiny GGUF files that the tests write themselves with the ``gguf`` package's writer.

A GGUF file is what llama.cpp's converter makes of a Hugging Face Llama: the config as
``llama.*`` metadata, a byte-level BPE tokenizer as ``tokenizer.*`` metadata, and the weights
under llama.cpp's tensor names, with the rows of q and k reordered for llama.cpp's rotary layout.
``write_llama_gguf`` does the same for a tiny model, so the loader's output can be compared
tensor by tensor with the model that was written.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0 (unk, pad), 1 (bos), 2 (eos)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w")]
CONTROL, NORMAL = 3, 1  # llama.cpp's token types


def _byte_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE (GPT-2) spells the bytes 0..255 with:
    printable Latin-1 bytes stand for themselves, the others are shifted to U+0100 and up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def tokens() -> list[str]:
    """The vocabulary: the special tokens, the byte alphabet, then one token per merge."""
    return [*SPECIAL_TOKENS, *_byte_alphabet(), *("".join(pair) for pair in MERGES)]


def tiny_llama(tied: bool, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with grouped-query attention over ``tokens()``; weights from ``seed``."""
    config = LlamaConfig(vocab_size=len(tokens()), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=tied, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):  # not all ones, so a misplaced norm would show
                parameter.data.uniform_(0.5, 1.5)
    return model


def _rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection from Hugging Face's rotary layout (row i of a head
    pairs with row i + d/2) to llama.cpp's (rows 2i and 2i + 1 pair)."""
    rows, columns = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, columns).transpose(1, 2).reshape(rows, columns)


def gguf_tensors(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's names and layout (the output projection only when
    it is not tied to the embedding)."""
    config, state = model.config, model.state_dict()
    named = {"token_embd.weight": state["model.embed_tokens.weight"],
             "output_norm.weight": state["model.norm.weight"]}
    if not config.tie_word_embeddings:
        named["output.weight"] = state["lm_head.weight"]
    parts = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for layer in range(config.num_hidden_layers):
        for short, long in parts.items():
            weight = state[f"model.layers.{layer}.{long}.weight"]
            if short == "attn_q":
                weight = _rotary_rows(weight, config.num_attention_heads)
            elif short == "attn_k":
                weight = _rotary_rows(weight, config.num_key_value_heads)
            named[f"blk.{layer}.{short}.weight"] = weight
    return named


def write_llama_gguf(path: Path, model: LlamaForCausalLM, quantize: bool = False,
                     name: str = "tiny llama") -> dict[str, np.ndarray]:
    """Write ``model`` with the byte-level tokenizer of ``tokens()`` as a GGUF file at ``path``.

    With ``quantize`` the 2-D weights are stored as Q8_0 (8-bit blocks of 32), as a released GGUF
    would be; norms stay F32. Returns what a reader dequantizes each tensor to, by GGUF name.
    """
    config = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens())
    writer.add_token_types([CONTROL] * len(SPECIAL_TOKENS)
                           + [NORMAL] * (len(tokens()) - len(SPECIAL_TOKENS)))
    writer.add_token_merges([f"{a} {b}" for a, b in MERGES])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    stored = {}
    for tensor_name, tensor in gguf_tensors(model).items():
        values = tensor.detach().float().numpy()
        if quantize and values.ndim == 2:
            blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(tensor_name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            stored[tensor_name] = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tensor_name, values)
            stored[tensor_name] = values
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored
