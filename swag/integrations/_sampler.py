"""A shuffling sampler whose order depends only on (seed, epoch), so a resumed run sees it."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

from swag.core._checks import check_count
from swag.core._initdoc import document_init


@document_init
class ResumableSampler(Sampler[int]):
    """Shuffles ``data`` anew each epoch, as ``DataLoader(shuffle=True)``, but resumably.

    Epoch ``e``'s order is a permutation drawn from a generator seeded with ``(seed, e)``
    alone, so a run resumed from a checkpoint at epoch ``e`` sees the orders an uninterrupted
    run would have: Lightning calls :meth:`set_epoch` at the start of every epoch. A
    ``RandomSampler`` (what ``shuffle=True`` builds) instead draws each epoch's order from its
    generator's running state, which a checkpoint does not hold.

    Args:
        data: the dataset (anything with a length) whose indices ``0 .. len(data) - 1`` are
            shuffled.
        seed: an int >= 0.

    Example:
        >>> sampler = ResumableSampler(range(5), seed=0)
        >>> sampler.set_epoch(3)
        >>> sorted(sampler)
        [0, 1, 2, 3, 4]
        >>> loader = torch.utils.data.DataLoader(range(5), sampler=sampler, batch_size=2)
    """

    def __init__(self, data: Sized, *, seed: int) -> None:
        if not isinstance(data, Sized):
            raise TypeError(f"data must have a length (a dataset), got {type(data).__name__}")
        check_count(seed, "seed", minimum=0)
        if seed >= 2**31:
            raise ValueError(f"seed must be an int in [0, 2**31), got {seed}")
        self.size, self.seed, self.epoch = len(data), seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on (Lightning calls it)."""
        check_count(epoch, "epoch", minimum=0)
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed((self.seed << 32) + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size
