"""What each rank runs in ``test_cache_distributed``: every cache mlr keeps, built from an empty
``$MLR_CACHE`` by the ranks of one torchrun, then trained on with ``distributed=STRATEGY``.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/cache_ranks.py \
        STRATEGY GGUF_FILE OUT

The GGUF conversion is asked for before the process group exists (the lock alone decides who
builds), the default model and the aligned model after it (rank 0 builds, rank 1 waits; rank 0
trains the alignment alone).
"""

from __future__ import annotations

import sys

import torch
from mlr.models import model_dir
from mlr.tuning.align import AlignSettings, align_model
from mlr.tuning.distributed import cleanup_distributed, init_distributed
from mlr.tuning.train import TrainConfig, train

ALIGNMENT = AlignSettings(steps=2, batch_size=4, max_length=48)
TRAINING = dict(steps=1, batch_size=4, max_length=48, progress=False)


def main(strategy: str, gguf_file: str, out: str) -> None:
    torch.set_num_threads(1)  # two ranks on two cores
    converted = model_dir(gguf_file)
    init_distributed("cpu")
    model_dir(None)
    aligned = align_model(ALIGNMENT, progress=False)
    try:
        for name, model in (("aligned", aligned), ("gguf", converted)):
            train(TrainConfig(out=f"{out}/{name}", model=str(model), distributed=strategy, **TRAINING))
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
