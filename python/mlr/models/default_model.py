"""The embedded default model: a tiny Llama and a tokenizer trained on the project's corpus.

Nothing is downloaded. The directory is built once and cached under ``$MLR_CACHE`` (default
``~/.cache/mlr``; ``mlr.models.cache`` makes the build atomic, once across processes and ranks,
and checked before use) in a folder named
by a hash of the recipe (architecture, tokenizer settings, seed, corpus text), so changing any of
them builds a new one.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from mlr.data.corpus import tokenizer_texts
from mlr.models.cache import cache_entry, cache_root
from mlr.models.chat import CHAT_TEMPLATE
from mlr.models.tokenizer import train_tokenizer

RECIPE_VERSION = 1
SEED = 0
VOCAB_SIZE = 1024
# Small enough that alignment, three fine-tuning arms x three seeds and evaluation run in minutes
# on two CPU cores; 4 layers x 7 projections = 28 modules for the robustness analysis.
ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
}


@lru_cache(maxsize=1)
def _corpus_digest() -> str:
    digest = hashlib.sha256()
    for text in tokenizer_texts():
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def recipe_hash() -> str:
    """A short hash of everything that determines the default model's files."""
    recipe = {
        "version": RECIPE_VERSION,
        "seed": SEED,
        "vocab_size": VOCAB_SIZE,
        "architecture": ARCHITECTURE,
        "chat_template": CHAT_TEMPLATE,
        "corpus": _corpus_digest(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _save_default_model(directory: Path) -> None:
    tokenizer = train_tokenizer(tokenizer_texts(), VOCAB_SIZE,
                                ARCHITECTURE["max_position_embeddings"])
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = LlamaConfig(vocab_size=len(tokenizer), **ARCHITECTURE, **special_ids)
    # The seed is set only for the initialisation; the caller's random state is left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**special_ids)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def default_model_path() -> Path:
    """Where the default model of this recipe is cached, built or not (nothing is built here: it
    names the model in the keys of cached outputs; :func:`default_model_dir` builds it)."""
    return cache_root() / f"tiny-llama-{recipe_hash()}"


def default_model_dir() -> Path:
    """The cached default model directory, built on first use (:func:`mlr.models.cache.cache_entry`)."""
    return cache_entry(default_model_path(), _save_default_model, "the embedded default model")
