"""``mlr.models.cache.cache_entry``: built once (also by two processes at once), published whole
with a manifest, and never used when incomplete: such an entry is rebuilt with a one-line note.
The torchrun side (ranks, before and after the process group) is in test_cache_distributed."""

from __future__ import annotations

import json
import multiprocessing
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from mlr.models import load_model, recipe_hash
from mlr.models.cache import MANIFEST, cache_entry, entry_problem

WEIGHTS = b"0123456789"
# What a rank other than 0 saves under torch.distributed: transformers writes no config or weights.
TOKENIZER_ONLY = ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json")


def fake_model(staging: Path) -> None:
    """The files a model directory needs, a few bytes each."""
    (staging / "config.json").write_text('{"model_type": "llama"}')
    (staging / "tokenizer_config.json").write_text("{}")
    (staging / "model.safetensors").write_bytes(WEIGHTS)


class CountingBuild:
    """``fake_model`` that appends a line to ``log`` per build (a file, so processes share it)."""

    def __init__(self, log: Path, seconds: float = 0.0) -> None:
        self.log, self.seconds = log, seconds

    def __call__(self, staging: Path) -> None:
        with open(self.log, "a") as handle:
            handle.write("built\n")
        time.sleep(self.seconds)
        fake_model(staging)

    @property
    def builds(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


def notes(capsys: pytest.CaptureFixture) -> list[str]:
    """What mlr said on stderr (not the tokenizer trainer's progress)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlr: ")]


def test_an_entry_is_built_once_with_its_manifest_then_reused(tmp_path, capsys):
    build = CountingBuild(tmp_path / "log")
    entry = tmp_path / "cache" / "entry"
    assert cache_entry(entry, build, "the thing") == entry
    assert notes(capsys) == [f"mlr: building the thing in {entry} (once)"]
    manifest = json.loads((entry / MANIFEST).read_text())["files"]
    assert manifest == {"config.json": 23, "model.safetensors": len(WEIGHTS), "tokenizer_config.json": 2}
    assert cache_entry(entry, build, "the thing") == entry
    assert build.builds == 1 and notes(capsys) == []
    assert sorted(p.name for p in entry.parent.iterdir()) == [".entry.lock", "entry"]


def test_an_entry_whose_file_changed_size_is_rebuilt_with_a_note(tmp_path, capsys):
    build = CountingBuild(tmp_path / "log")
    entry = cache_entry(tmp_path / "entry", build, "the thing")
    (entry / "model.safetensors").write_bytes(WEIGHTS[:3])  # cut short
    assert entry_problem(entry) == "model.safetensors has 3 bytes, 10 when it was built"
    capsys.readouterr()
    cache_entry(entry, build, "the thing")
    assert notes(capsys)[0] == (f"mlr: the cache entry {entry} is incomplete (model.safetensors "
                                "has 3 bytes, 10 when it was built); rebuilding it")
    assert build.builds == 2 and (entry / "model.safetensors").read_bytes() == WEIGHTS
    assert entry_problem(entry) is None


def test_the_default_model_holding_only_its_tokenizer_is_rebuilt_not_loaded(tmp_path, monkeypatch,
                                                                              capsys):
    """The entry a lost rename under torchrun used to leave: what rank 1 saved, the tokenizer."""
    monkeypatch.setenv("MLR_CACHE", str(tmp_path))
    entry = tmp_path / f"tiny-llama-{recipe_hash()}"
    entry.mkdir()
    for name in TOKENIZER_ONLY:
        (entry / name).write_text("{}")
    model, tokenizer = load_model(None)
    assert notes(capsys) == [
        f"mlr: the cache entry {entry} is incomplete (no {MANIFEST}); rebuilding it",
        f"mlr: building the embedded default model in {entry} (once)"]
    assert model.config.model_type == "llama" and len(tokenizer) == model.config.vocab_size
    assert entry_problem(entry) is None and (entry / "model.safetensors").is_file()


def test_a_build_that_leaves_no_model_publishes_nothing(tmp_path):
    def tokenizer_only(staging: Path) -> None:
        for name in TOKENIZER_ONLY:
            (staging / name).write_text("{}")

    entry = tmp_path / "entry"
    with pytest.raises(RuntimeError, match="^building the thing left no config.json or "
                                           "model.safetensors; nothing was cached$"):
        cache_entry(entry, tokenizer_only, "the thing")
    assert [p.name for p in tmp_path.iterdir()] == [".entry.lock"]  # no entry, no staging


def test_an_entry_from_before_manifests_is_adopted_not_rebuilt(tmp_path, capsys):
    build = CountingBuild(tmp_path / "log")
    entry = tmp_path / "aligned"
    (entry / "model").mkdir(parents=True)
    fake_model(entry / "model")
    (entry / "train.json").write_text("{}")
    assert cache_entry(entry, build, "the thing", model="model") == entry
    assert build.builds == 0 and notes(capsys) == []
    assert sorted(json.loads((entry / MANIFEST).read_text())["files"]) == [
        "model/config.json", "model/model.safetensors", "model/tokenizer_config.json", "train.json"]


def _build_after(start: Barrier, entry: Path, build: CountingBuild) -> None:
    start.wait()
    assert entry_problem(cache_entry(entry, build, "the thing")) is None


def test_two_processes_racing_on_one_entry_build_it_once(tmp_path):
    fork = multiprocessing.get_context("fork")
    start = fork.Barrier(2)
    build = CountingBuild(tmp_path / "log", seconds=0.5)  # long enough for both to ask meanwhile
    entry = tmp_path / "cache" / "entry"
    processes = [fork.Process(target=_build_after, args=(start, entry, build)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert build.builds == 1
    assert sorted(p.name for p in entry.parent.iterdir()) == [".entry.lock", "entry"]
