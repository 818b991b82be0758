"""Models for the pipeline: the embedded tiny default, local loading (directories, GGUF files,
preset names) and the chat format."""

from mlr.models.chat import CHAT_TEMPLATE, format_chat
from mlr.models.default_model import default_model_dir, default_model_path, recipe_hash
from mlr.models.loading import DTYPES, load_model, model_dir
from mlr.models.presets import PRESETS

__all__ = [
    "CHAT_TEMPLATE",
    "DTYPES",
    "PRESETS",
    "default_model_dir",
    "default_model_path",
    "format_chat",
    "load_model",
    "model_dir",
    "recipe_hash",
]
