"""MultiSWAG with one member per rank: train M SWAG members in parallel, predict with the mixture.

Each of the M ranks trains its own MLP on scikit-learn's digits (bundled, offline) from its own
seed, collects a SWAG posterior, and :func:`swag.distributed.gather_multiswag` gathers the M
posteriors into one :class:`swag.MultiSWAG` on every rank (tensors by ``all_gather``, the
layout as JSON; no pickle). Rank 0 then predicts with it and prints the test metrics of each
member and of the mixture.

Usage (CPU, gloo; 3 members)::

    torchrun --standalone --nproc-per-node 3 experiments/multiswag_torchrun.py --epochs 40
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn

import swag
from swag.data import load_sklearn, train_test_split
from swag.distributed import gather_multiswag


def train_member(
    x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int, max_rank: int
) -> tuple[nn.Module, swag.SWAGPosterior]:
    """One SWAG member: SGD from ``seed``, collecting once per epoch in the second half."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    collector = swag.Collector(model, max_rank=max_rank)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        if epoch >= epochs // 2:
            collector.collect()
    return model, collector.posterior()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-rank", type=int, default=10)
    parser.add_argument("--samples", type=int, default=30, help="BMA samples over the mixture")
    parser.add_argument("--seed", type=int, default=0, help="member m uses seed + m")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    x, y = load_sklearn("digits", flatten=True)
    split = torch.Generator().manual_seed(args.seed)  # the same split on every rank
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction=0.25, generator=split)
    model, member = train_member(x_train, y_train, args.seed + rank, args.epochs, args.max_rank)
    mixture = gather_multiswag(member)
    if rank == 0:
        g = torch.Generator().manual_seed(args.seed)
        for m, post in enumerate(mixture.components):
            probs = swag.predict(post, model, [x_test], num_samples=args.samples, generator=g)
            print(f"member {m}: {swag.metrics.summary(probs, y_test)}")
        probs = swag.predict(mixture, model, [x_test], num_samples=args.samples, generator=g)
        print(f"MultiSWAG of {world}: {swag.metrics.summary(probs, y_test)}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
