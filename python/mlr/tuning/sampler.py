"""A resumable data order: a fresh seeded permutation of the examples every epoch.

The whole state is (seed, epoch, cursor), so a checkpoint stores three integers and a resumed run
draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import torch


class EpochSampler:
    """Hands out example indices in batches; epoch ``e`` visits all ``size`` examples in the order
    of ``torch.randperm`` seeded with ``seed + e``. A batch that would cross an epoch's end is
    filled from the next epoch, so every batch is full."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("EpochSampler needs at least one example")
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def next_batch(self, batch_size: int) -> list[int]:
        indices = []
        while len(indices) < batch_size:
            if self.cursor == self.size:
                self.epoch += 1
                self.cursor = 0
                self._order = self._permutation(self.epoch)
            take = min(batch_size - len(indices), self.size - self.cursor)
            indices.extend(self._order[self.cursor:self.cursor + take])
            self.cursor += take
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["size"], state["seed"]) != (self.size, self.seed):
            raise ValueError(f"sampler state is for {state['size']} examples with seed "
                             f"{state['seed']}, not {self.size} with seed {self.seed}")
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._permutation(self.epoch)
