"""Which process this is in a run of several (torchrun, accelerate launch, Ray actors): the
one owner of rank, world size, "the main process" and the barrier.

torchrun and accelerate set ``RANK`` / ``WORLD_SIZE`` in each process's environment; one
process alone is rank 0 of 1. Only the main process writes what a run shares (the run
directory, merged outputs); every process writes its own part files.

>>> rank(), world_size(), is_main_process()  # doctest: +SKIP
(0, 1, True)
"""

from __future__ import annotations

import os


def rank() -> int:
    """This process's rank: ``RANK`` under torchrun / accelerate, else 0."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes share the work: ``WORLD_SIZE``, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or a single process: the one that writes what is shared."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process of the run gets here (gloo: CPUs and GPUs alike); nothing to
    wait for in a single process. Joins the process group if the launcher has not (torchrun
    sets what ``init_process_group`` reads) and leaves it again when it joined it."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo")
    dist.barrier()
    if joined:
        dist.destroy_process_group()


__all__ = ["barrier", "is_main_process", "rank", "world_size"]
