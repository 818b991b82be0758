"""The training metrics log: one JSON object per optimizer step, appended as the run goes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlr.io import write_text_atomic


class MetricsLog:
    """Appends ``{"step": ..., ...}`` lines to ``path`` and flushes each, so a killed run keeps
    every line up to the kill (a torn last line is dropped by ``rewind``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rewind(self, step: int) -> None:
        """Keep only the complete records of steps ``<= step`` (a resumed run logs the rest
        again, so no step appears twice)."""
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", step + 1) <= step:
                    kept.append(line + "\n")
        write_text_atomic(self.path, "".join(kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
