"""Batches of similar-length texts for sentence-transformers' trainer.

sentence-transformers' DefaultBatchSampler, except that texts are shuffled in blocks of 50 batches, sorted
by length inside a block, and the batches then come in random order: sentences of a few tokens are no
longer padded to the longest question of their batch, a several-fold saving on a CPU. A module-level
class because the trainer pickles its arguments (the sampler class among them) into every checkpoint.
"""

from __future__ import annotations

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Shuffled batches of texts of similar length (by characters of the first text column)."""

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed: int = 0, block: int = 50) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        column = "text" if "text" in dataset.column_names else dataset.column_names[0]
        self.lengths = [len(t) for t in dataset[column]]  # characters: a proxy for tokens
        self.block = block

    def batches(self) -> list[list[int]]:
        """This epoch's batches (the same for the same seed and epoch, so a resumed run sees the same order)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.block
        out: list[list[int]] = []
        for start in range(0, len(perm), size):
            chunk = sorted(perm[start : start + size], key=lambda i: -self.lengths[i])
            out += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            out = [b for b in out if len(b) == self.batch_size]
        return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]

    def __iter__(self):
        yield from self.batches()

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
