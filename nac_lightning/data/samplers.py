"""DomainBed's balanced per-domain training batches as a seeded, epoch-aware sampler.

DomainBed draws, at every step, ``batch_size`` samples from *each* source domain (one infinite
loader per domain, sampling with replacement) and trains on their union. Here the source
domains' training splits are concatenated (:class:`~torch.utils.data.ConcatDataset`) and
:class:`BalancedDomainSampler` yields indices into that concatenation in chunks of
``batch_size * num_domains``: each chunk is one training step, domain-major (the first
``batch_size`` indices come from domain 0, the next from domain 1, ...). Use it with a plain
:class:`~torch.utils.data.DataLoader` whose ``batch_size`` is ``batch_size * num_domains``.

Being a regular sampler with ``set_epoch``, it works with Lightning's epoch bookkeeping: each
epoch draws fresh, reproducible batches from ``(seed, epoch)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler

from nac_lightning.data.splits import seed_hash

__all__ = ["BalancedDomainSampler", "DistributedBalancedDomainSampler"]


class BalancedDomainSampler(Sampler[int]):
    """Indices for balanced per-domain batches over concatenated domains.

    Args:
        domain_sizes: number of samples of each domain, in concatenation order.
        batch_size: samples drawn from *every* domain per step.
        num_steps: steps per epoch; default ``ceil(max(domain_sizes) / batch_size)`` (enough
            steps to see as many samples as the largest domain holds).
        seed: base seed; epoch ``e`` uses ``seed_hash(seed, e)``.
        replacement: True (DomainBed): sample with replacement; False: walk through random
            permutations of each domain (reshuffled when exhausted).
        rank, num_replicas: this process's rank and the number of processes (data parallel):
            every rank draws its own balanced batches (seeded by ``(seed, epoch, rank)``).

    ``len(sampler) == num_steps * batch_size * len(domain_sizes)``.
    """

    def __init__(
        self,
        domain_sizes: Sequence[int],
        batch_size: int,
        num_steps: int | None = None,
        seed: int = 0,
        replacement: bool = True,
        rank: int = 0,
        num_replicas: int = 1,
    ) -> None:
        sizes = [int(s) for s in domain_sizes]
        if not sizes:
            raise ValueError("BalancedDomainSampler needs at least one domain (domain_sizes=[])")
        if any(s <= 0 for s in sizes):
            raise ValueError(
                f"every domain needs at least one training sample, got domain sizes {sizes}"
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.domain_sizes = sizes
        self.batch_size = int(batch_size)
        self.num_steps = (
            math.ceil(max(sizes) / self.batch_size) if num_steps is None else int(num_steps)
        )
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.seed = int(seed)
        self.replacement = bool(replacement)
        self.rank, self.num_replicas = int(rank), int(num_replicas)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, {num_replicas=}")
        self.epoch = 0
        self._epoch_set = False
        self._iterated = False

    @property
    def num_domains(self) -> int:
        """Number of domains."""
        return len(self.domain_sizes)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (called by Lightning)."""
        self.epoch = int(epoch)
        self._epoch_set = True

    def __len__(self) -> int:
        return self.num_steps * self.batch_size * self.num_domains

    def _domain_indices(self, size: int, generator: torch.Generator) -> torch.Tensor:
        total = self.num_steps * self.batch_size
        if self.replacement:
            return torch.randint(size, (total,), generator=generator)
        n_perm = math.ceil(total / size)
        perms = torch.rand(n_perm, size, generator=generator).argsort(dim=1)
        return perms.reshape(-1)[:total]

    def __iter__(self) -> Iterator[int]:
        # Without set_epoch (plain loops), consecutive iterations advance the epoch themselves.
        if self._iterated and not self._epoch_set:
            self.epoch += 1
        self._iterated, self._epoch_set = True, False
        key = (
            (self.seed, self.epoch)
            if self.num_replicas == 1
            else (self.seed, self.epoch, self.rank)
        )
        generator = torch.Generator().manual_seed(seed_hash(*key))
        offset = 0
        per_domain = []
        for size in self.domain_sizes:
            idx = self._domain_indices(size, generator) + offset
            per_domain.append(idx.view(self.num_steps, self.batch_size))
            offset += size
        # (steps, domains, batch) -> flat, one step's chunk after the other, domain-major.
        yield from torch.stack(per_domain, dim=1).reshape(-1).tolist()


class DistributedBalancedDomainSampler(BalancedDomainSampler, DistributedSampler):
    """:class:`BalancedDomainSampler` for one rank of a data-parallel run.

    It is a :class:`~torch.utils.data.DistributedSampler` only so that Lightning keeps it instead
    of wrapping it (a wrapper would shuffle the indices across batches and lose the per-step
    balance). Each rank yields ``num_steps`` balanced batches of its own.
    """

    def __init__(
        self,
        domain_sizes: Sequence[int],
        batch_size: int,
        num_steps: int | None = None,
        seed: int = 0,
        replacement: bool = True,
        rank: int = 0,
        num_replicas: int = 1,
    ) -> None:
        # DistributedSampler.__init__ is not called: it needs a dataset and a process group.
        BalancedDomainSampler.__init__(
            self, domain_sizes, batch_size, num_steps, seed, replacement, rank, num_replicas
        )
