"""The embedded default model: built once into a temporary cache, reloaded, chat format, errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlr.analysis.config import AnalysisConfig
from mlr.data.security_data import load_security_data
from mlr.errors import MlrInputError
from mlr.models import default_model as default_model_module
from mlr.models import default_model_dir, default_model_path, format_chat, load_model


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh MLR_CACHE for the session, so the default model is built (once) by these tests."""
    cache = tmp_path_factory.mktemp("mlr-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLR_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def default_dir(model_cache: Path) -> Path:
    return default_model_dir()


@pytest.fixture(scope="session")
def default_model(default_dir: Path):
    return load_model(None)


def test_default_dir_is_built_in_the_cache_and_reused(model_cache: Path, default_dir: Path) -> None:
    assert default_dir.parent == model_cache
    assert default_dir.name.startswith("tiny-llama-")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (default_dir / name).is_file(), name
    built_at = (default_dir / "model.safetensors").stat().st_mtime_ns
    assert default_model_dir() == default_dir
    assert (default_dir / "model.safetensors").stat().st_mtime_ns == built_at
    lock = f".{default_dir.name}.lock"
    assert sorted(p.name for p in model_cache.iterdir()) == [lock, default_dir.name]  # no staging


def test_recipe_change_changes_the_directory(default_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    changed = dict(default_model_module.ARCHITECTURE, num_hidden_layers=2)
    monkeypatch.setattr(default_model_module, "ARCHITECTURE", changed)
    assert default_model_module.recipe_hash() not in default_dir.name


def test_default_model_is_a_tiny_llama(default_model) -> None:
    model, tokenizer = default_model
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers) == (128, 4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert not model.training
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "left"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_builds_are_deterministic(default_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLR_CACHE", str(tmp_path))
    rebuilt = default_model_dir()
    assert rebuilt.parent == tmp_path
    assert (rebuilt / "tokenizer.json").read_bytes() == (default_dir / "tokenizer.json").read_bytes()
    first, _ = load_model(default_dir)
    second, _ = load_model(rebuilt)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_keys_name_the_default_model_without_building_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLR_CACHE", str(tmp_path))
    prompts = load_security_data(None, None)  # the embedded set: no model needed
    assert AnalysisConfig().probe_key(prompts)["model"] == str(default_model_path())
    assert default_model_path().parent == tmp_path
    assert not any(tmp_path.iterdir())


def test_generation_stops_and_forward_runs(default_model) -> None:
    model, tokenizer = default_model
    batch = tokenizer([format_chat(tokenizer, "What is 2 + 3?"), format_chat(tokenizer, "Hi")],
                      return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
        logits = model(**batch).logits
    assert out.shape[1] <= batch["input_ids"].shape[1] + 4
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))


def test_chat_template_round_trip(default_model) -> None:
    _, tokenizer = default_model
    prompt, answer = "How do I build a birdhouse?", "Sure! Use pine."
    prompt_text = format_chat(tokenizer, prompt)
    full_text = format_chat(tokenizer, prompt, answer)
    assert prompt_text == "<|bos|><|user|>\nHow do I build a birdhouse?<|end|>\n<|assistant|>\n"
    assert full_text == prompt_text + "Sure! Use pine.<|end|>\n"
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert full_ids[:len(prompt_ids)] == prompt_ids  # the loss mask is a token prefix
    assert tokenizer(full_text)["input_ids"] == full_ids  # no special tokens added on encoding
    assert tokenizer.decode(full_ids) == full_text
    assert tokenizer.decode(full_ids[len(prompt_ids):], skip_special_tokens=True).strip() == answer
    templated = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                              add_generation_prompt=True, return_dict=False)
    assert templated == prompt_ids
    for special in ("<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|pad|>"):
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1, special


def test_digits_are_single_tokens_and_any_text_encodes(default_model) -> None:
    _, tokenizer = default_model
    assert tokenizer.tokenize("1234") == ["1", "2", "3", "4"]
    text = "Ünïcödé ✓ and words never seen: quixotic"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_format_chat_without_a_template() -> None:
    plain = SimpleNamespace(chat_template=None, eos_token="</s>", bos_token="<s>")
    assert format_chat(plain, "Say hi") == "Say hi\n"
    assert format_chat(plain, "Say hi", "hi") == "Say hi\nhi</s>"


def test_load_model_options(default_dir: Path) -> None:
    model, tokenizer = load_model(str(default_dir), dtype="bfloat16", padding_side="right")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"path": "/nonexistent/model"}, "not found"),
    ({"dtype": "float8"}, "unknown dtype"),
    ({"padding_side": "middle"}, "padding_side"),
    ({"device": "toaster"}, "unknown device"),
])
def test_load_errors_are_one_line_input_errors(kwargs: dict, message: str,
                                               default_dir: Path) -> None:
    kwargs = {"path": default_dir, **kwargs}
    with pytest.raises(MlrInputError, match=message) as error:
        load_model(**kwargs)
    assert "\n" not in str(error.value)


def test_a_folder_without_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MlrInputError, match="not a model directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(MlrInputError, match="cannot load"):
        load_model(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_an_input_error(default_dir: Path) -> None:
    with pytest.raises(MlrInputError, match="no CUDA GPU"):
        load_model(default_dir, device="cuda")


def test_default_dir_follows_mlr_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLR_CACHE", str(tmp_path))
    assert default_model_module.cache_root() == tmp_path
    monkeypatch.delenv("MLR_CACHE")
    assert default_model_module.cache_root() == Path(os.path.expanduser("~")) / ".cache" / "mlr"
