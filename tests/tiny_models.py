"""Tiny models, tokenizers and batches built inside the tests (no files, no network)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 97
HIDDEN = 32


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def tiny_llama(layers: int = 3, seed: int = 0, family: str = "llama", vocab: int = VOCAB):
    """A Llama-, Mistral- or Qwen2-architecture causal LM with grouped-query attention."""
    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[family]
    config = config_class(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2)
    return _seeded(lambda: model_class(config), seed)


def tiny_gpt2(layers: int = 3, seed: int = 0, vocab: int = VOCAB):
    config = GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=layers, n_head=4, n_positions=128,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return _seeded(lambda: GPT2LMHeadModel(config), seed)


def tiny_model(kind: str, layers: int = 3, seed: int = 0):
    return tiny_gpt2(layers, seed) if kind == "gpt2" else tiny_llama(layers, seed, family=kind)


def padded_batch(lengths: list[int], padding: str = "right", seed: int = 0,
                 vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids (never the pad id 0) and the 0/1 mask, padded on ``padding``'s side."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        span = slice(0, length) if padding == "right" else slice(width - length, width)
        ids[row, span] = torch.randint(3, vocab, (length,), generator=generator)
        mask[row, span] = 1
    return ids, mask


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over the words of ``texts`` (no chat template), with
    pad/bos/eos/unk as ids 0..3."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = sorted({w for text in texts for w in text.split()})
    vocab = {token: index for index, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
