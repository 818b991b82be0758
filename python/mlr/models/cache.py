"""The model cache: where built and converted model directories live, and how they get there.

Everything goes under ``$MLR_CACHE`` (default ``~/.cache/mlr``). Every entry (the embedded default
model, a GGUF file's conversion, an aligned model) is made by :func:`cache_entry`, which builds it

- **once**, across processes and ranks: the builder holds an exclusive ``flock`` on the empty file
  ``.<name>.lock`` beside the entry, and whoever comes later finds the entry built. A lock works
  with or without a process group, and when only some ranks ask. Under an initialized process group
  rank 0 builds and the other ranks wait for its entry: transformers' ``save_pretrained`` writes the
  config and weights from rank 0 alone, so a model saved by another rank is its tokenizer alone.
- **atomically**: in a staging folder beside the entry, renamed into place
  (:func:`mlr.io.publish_directory`);
- **checked**: the build must leave a model (config, weights, tokenizer), and a manifest naming
  every file and its size is written last. An entry whose manifest is missing or disagrees with its
  files is never used: it gets a one-line note on stderr and is rebuilt. An entry made by an mlr
  from before manifests (published atomically, with config, weights and tokenizer) is adopted: its
  manifest is written, nothing is rebuilt.

The lock files stay: deleting one while another process waits on it would let a third lock a new
file of the same name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from mlr.io import publish_directory, write_json_atomic

MANIFEST = "mlr_cache_manifest.json"
NO_MANIFEST = f"no {MANIFEST}"
CONFIG_FILES = ("config.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # one of them
POLL_S = 0.1
WAIT_NOTE_S = 60.0  # a rank still waiting for rank 0 after this long says so (once)


def cache_root() -> Path:
    """``$MLR_CACHE``, else ``~/.cache/mlr`` (not created here)."""
    return Path(os.environ.get("MLR_CACHE") or Path.home() / ".cache" / "mlr").expanduser()


def cache_entry(path: str | os.PathLike, build: Callable[[Path], None], what: str,
                model: str = ".") -> Path:
    """The complete cache entry ``path``, built by ``build(staging)`` unless it is there already.

    ``what`` names the entry in the notes ("the embedded default model"); ``model`` is where the
    Hugging Face model directory sits inside it. Safe when processes or ranks ask at once (see the
    module docstring): one of them builds, the others wait. Raises ``RuntimeError`` when ``build``
    leaves no config, weights or tokenizer, and whatever ``build`` raises; nothing is published then.
    """
    path = Path(path)
    if entry_problem(path) is None:
        return path
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return _wait_for_rank_zero(path, what)
    with _locked(path):
        problem = entry_problem(path)
        if problem is None:
            return path
        if path.exists():
            if problem == NO_MANIFEST and not _missing_model_files(path / model):
                write_json_atomic(path / MANIFEST, _manifest(path))
                return path
            print(f"mlr: the cache entry {path} is incomplete ({problem}); rebuilding it",
                  file=sys.stderr, flush=True)
        for stale in path.parent.glob(f".{path.name}.building-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        print(f"mlr: building {what} in {path} (once)", file=sys.stderr, flush=True)

        def build_checked(staging: Path) -> None:
            build(staging)
            missing = _missing_model_files(staging / model)
            if missing:
                raise RuntimeError(f"building {what} left no {' or '.join(missing)}; nothing "
                                   "was cached")
            write_json_atomic(staging / MANIFEST, _manifest(staging))

        return publish_directory(path, build_checked)


def entry_problem(path: str | os.PathLike) -> str | None:
    """Why the cache entry ``path`` cannot be used as it is (a missing or unreadable manifest, a
    listed file that is missing or has another size), or None when it is complete."""
    path = Path(path)
    try:
        listed = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
        sizes = {str(name): int(size) for name, size in listed.items()}
    except FileNotFoundError:
        return NO_MANIFEST
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"an unreadable {MANIFEST}"
    for name, size in sizes.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} when it was built"
    return None


def _manifest(directory: Path) -> dict:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {"files": {p.relative_to(directory).as_posix(): p.stat().st_size for p in files}}


def _missing_model_files(model: Path) -> list[str]:
    """The files a model directory needs (config, weights, tokenizer config) that ``model`` lacks."""
    missing = [name for name in CONFIG_FILES if not (model / name).is_file()]
    if not any((model / name).is_file() for name in WEIGHT_FILES):
        missing.append(WEIGHT_FILES[0])
    return missing


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` (closing the file releases it)."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _wait_for_rank_zero(path: Path, what: str) -> Path:
    """Wait until rank 0 has built the entry ``path`` (it holds the lock while it builds)."""
    started = time.monotonic()
    noted = False
    while True:
        with _locked(path):
            if entry_problem(path) is None:
                return path
        if not noted and time.monotonic() - started > WAIT_NOTE_S:
            print(f"mlr: rank {dist.get_rank()} has waited {WAIT_NOTE_S:.0f} s for rank 0 to build "
                  f"{what} in {path} (under a process group rank 0 builds each cache entry)",
                  file=sys.stderr, flush=True)
            noted = True
        time.sleep(POLL_S)
