"""Batches of the fashionvil_trainer: a resumable distributed sampler for training, an
unpadded, sharded one for evaluation, and the data loaders built on them."""
import math
import os

import numpy as np
import torch
from mmf.common.batch_collator import BatchCollator

from mmf_fashionvil.rng import SAMPLER_STREAM, derived_seed


class TrainBatchSampler:
    """Resumable distributed batch sampler for training.

    Epoch e visits ``perm_e = randperm(N)`` drawn from (seed, e); global batch
    s is ``perm_e[s*B:(s+1)*B]`` and rank r takes its slice [r*b, (r+1)*b)
    with b = B / world_size. The last incomplete global batch is dropped. The
    samples of an update therefore do not depend on the number of ranks, and a
    resumed epoch starts at batch ``start_batch`` without loading the others.

    It yields (epoch, index) pairs, which :class:`EpochItems` turns into items: the epoch
    travels with every index, so persistent loader workers (each with its own copy of the
    dataset) draw each item's randomness for the right epoch.
    """

    def __init__(self, num_samples, global_batch_size, rank, world_size, seed):
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.batches_per_epoch = num_samples // global_batch_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch, start_batch=0):
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self):
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(
            derived_seed(self.seed, self.epoch, SAMPLER_STREAM)
        )
        order = torch.randperm(self.num_samples, generator=generator)
        for step in range(self.start_batch, self.batches_per_epoch):
            begin = step * self.global_batch_size + self.rank * self.batch_size
            yield [(self.epoch, index) for index in order[begin : begin + self.batch_size].tolist()]


class EvalBatchSampler:
    """Evaluation batches without padding: rank r takes the r-th of W
    contiguous, near-equal shards of the split, cut into the same number of
    batches on every rank (so collectives inside a model's forward, such as
    contrastive losses gathering negatives, pair up across ranks)."""

    def __init__(self, num_samples, batch_size, rank, world_size):
        shards = np.array_split(np.arange(num_samples), world_size)
        num_batches = math.ceil(len(shards[0]) / batch_size)
        if len(shards[-1]) < num_batches:
            raise ValueError(
                f"Cannot split {num_samples} evaluation samples over {world_size} ranks "
                f"into equal numbers of non-empty batches of at most {batch_size}: use a "
                "larger evaluation batch size or fewer ranks"
            )
        self.batches = [b.tolist() for b in np.array_split(shards[rank], num_batches)]

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class EpochItems(torch.utils.data.Dataset):
    """``dataset`` indexed by the (epoch, index) pairs of :class:`TrainBatchSampler`: sets
    the dataset's epoch (its ``set_epoch``, which seeds per-item randomness) before reading
    the item."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, epoch_and_index):
        epoch, index = epoch_and_index
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def loader_workers(configured, device):
    """``training.num_workers`` as a number: an int as given; ``auto`` = this rank's share of
    the CPU cores left after its compute threads (on CPU, torch's intra-op threads; on a
    GPU, one core drives the device), at least 0. On 2 CPU cores, with torch using both,
    that is 0: workers there slow the model's compute (measured 1.9x per update) more than
    they overlap loading."""
    if str(configured).lower() != "auto":
        workers = int(configured)
        if workers < 0:
            raise ValueError(f"training.num_workers must be >= 0 or auto, got {workers}")
        return workers
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    compute_threads = 1 if device.type == "cuda" else torch.get_num_threads()
    return max(0, cores // ranks_here - compute_threads)


def build_loader(dataset, dataset_name, split, global_batch_size, rank, world_size, seed,
                 num_workers, pin_memory):
    """A DataLoader of ``split`` collated into MMF SampleLists: resumable shuffled batches
    (:class:`TrainBatchSampler`) for train, sharded ones (:class:`EvalBatchSampler`) else.
    Workers, when there are any, stay alive across epochs and evaluations (re-creating
    them stalls the first batches)."""
    collate_fn = BatchCollator(getattr(dataset, "dataset_name", dataset_name), split)
    if split == "train":
        sampler = TrainBatchSampler(len(dataset), global_batch_size, rank, world_size, seed)
        if sampler.batches_per_epoch == 0:
            raise ValueError(
                f"The train split of {dataset_name} has {len(dataset)} samples, fewer than "
                f"one global batch ({global_batch_size})"
            )
        dataset = EpochItems(dataset)
    else:
        sampler = EvalBatchSampler(len(dataset), global_batch_size // world_size, rank,
                                   world_size)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Its own generator: creating an iterator must not consume the global RNG
        # (exact resume).
        generator=torch.Generator(),
    )
