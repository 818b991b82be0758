"""A tiny chat model directory for the fine-tuning and evaluation tests: the embedded tokenizer (BPE
with the chat template) and a 2-layer Llama of hidden size 32, saved like any local model.

``tiny_chat_model_dir()`` builds it once per test process into a temporary folder removed at exit.
Test modules that import ``one_thread`` run each of their tests on one CPU thread.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

INSTRUCTIONS = [
    {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b),
     "task": "arithmetic"}
    for a in range(4) for b in range(3)
] + [
    {"instruction": "What color is a banana?", "input": "", "output": "yellow", "task": "fact"},
    {"messages": [{"role": "user", "content": "Reverse the letters.\n\nc a t"},
                  {"role": "assistant", "content": "t a c"}]},
]


def build_chat_model_dir(path: Path, seed: int = 0) -> Path:
    from mlr.models import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@lru_cache(maxsize=1)
def tiny_chat_model_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mlr-tiny-chat-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return build_chat_model_dir(folder / "model")


def write_instruction_file(path: Path) -> Path:
    path.write_text(json.dumps(INSTRUCTIONS), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a shared 2-core machine, several threads per
    process spend most of their time waiting for each other. Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
