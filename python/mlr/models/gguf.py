"""GGUF files as Hugging Face model directories: converted once, cached, then loaded as directories.

A GGUF file (llama.cpp's format: metadata, tokenizer and possibly quantized tensors in one file)
is read by ``transformers`` through the ``gguf`` package: ``from_pretrained(folder,
gguf_file=name)`` builds the config and tokenizer from the metadata and dequantizes every tensor
(to float32 here). That takes tens of seconds for a 135 M-parameter model, so it is done once and
the result saved with ``save_pretrained`` into ``$MLR_CACHE/gguf/<stem>-<key>`` (default
``~/.cache/mlr``), where the key hashes the file's resolved path, size and modification time: a
file changed in place is converted again. The conversion is atomic, done once across processes
and ranks, and checked before use (``mlr.models.cache``). The cached directory holds float32
weights, about 4 bytes per parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from functools import partial
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from mlr.errors import MlrInputError, first_line
from mlr.models.cache import cache_entry, cache_root
from mlr.models.requirements import package_dir

# transformers 5 can keep GGUF blocks packed (with the `kernels` package); older ones always unpack.
GgufConfig = getattr(transformers, "GgufConfig", None)

GGUF_MAGIC = b"GGUF"
# Bump when the conversion below changes what it writes, so old cached directories are not reused.
CONVERSION_VERSION = 1
SOURCE_FILE = "mlr_gguf_source.json"
INSTALL_GGUF = "pip install gguf"


def is_gguf_file(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "conversion": CONVERSION_VERSION}


def converted_dir(path: str | os.PathLike) -> Path:
    """Where the Hugging Face directory converted from the GGUF file ``path`` is cached."""
    path = Path(path)
    key = hashlib.sha256(json.dumps(_fingerprint(path), sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem) or "model"
    return cache_root() / "gguf" / f"{stem}-{key}"


def convert_gguf(path: Path, directory: Path) -> None:
    """Dequantize the GGUF file ``path`` to float32 and ``save_pretrained`` model and tokenizer
    into the existing empty ``directory``.

    The GGUF quantization config is dropped before saving: the weights are dense now, and
    ``save_pretrained`` refuses a model that still says it is GGUF-quantized. Raises
    ``MlrInputError`` when the ``gguf`` package is not installed or transformers cannot read the
    file (an unsupported architecture, a truncated file).
    """
    package_dir("gguf", "loading a GGUF file", INSTALL_GGUF)
    where = {"pretrained_model_name_or_path": path.parent, "gguf_file": path.name,
             "local_files_only": True}
    dense = {} if GgufConfig is None else {"quantization_config": GgufConfig(dequantize=True)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32, **dense)
    except (ImportError, OSError, EOFError, struct.error, ValueError, KeyError, IndexError,
            TypeError, NotImplementedError) as error:  # what a truncated or foreign file raises
        raise MlrInputError(f"cannot convert the GGUF file {path}: {first_line(error)}") from error
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    source = {**_fingerprint(path), "transformers": transformers.__version__}
    (directory / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def gguf_model_dir(path: str | os.PathLike) -> Path:
    """The cached Hugging Face directory of the GGUF file ``path``, converted on first use.

    Raises ``MlrInputError`` (one line) when ``path`` is missing or not a GGUF file, when the
    ``gguf`` package is not installed, or when the conversion fails.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MlrInputError(f"GGUF file not found: {path}")
    if not is_gguf_file(path):
        raise MlrInputError(f"not a GGUF file (it does not start with {GGUF_MAGIC!r}), nor a model "
                            f"directory: {path}")
    return cache_entry(converted_dir(path), partial(convert_gguf, path),
                       f"the Hugging Face directory of {path}")
