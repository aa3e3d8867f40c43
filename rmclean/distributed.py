"""Several processes, one run: under ``accelerate launch --multi_gpu --num_processes N`` (or
``torchrun --nproc_per_node N``) every process embeds its share of the texts into the shared
feature cache, then the main process alone trains and writes (README, "Scoring").

In a plain run (no ``WORLD_SIZE`` above 1 in the environment) nothing here imports accelerate
or ``torch.distributed``: :func:`process_share` is the identity, :func:`wait_for_everyone`
does nothing and :func:`is_main_process` is true. In a launched run accelerate's
``PartialState`` (the state ``Accelerator`` also uses, so fine-tuned members share it) is
started on first use.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

# A barrier waits for the slowest process to finish its share of the embedding: hours on
# hh-rlhf's full train split, far past torch.distributed's default timeout (30 min for gloo,
# 10 for nccl), after which the waiting processes would fail. A process that crashes does not
# leave the others waiting this long: torchrun (which `accelerate launch` runs) stops every
# process of the group when one fails.
BARRIER_TIMEOUT = timedelta(days=7)
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # torchrun, MPI
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")

_alone = False  # set by main_process_continues(): the other processes have stopped


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE`` or MPI's size); 1 for a plain run."""
    for name in WORLD_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return max(int(value), 1)
    return 1


def _state():
    """accelerate's ``PartialState`` of a launched run (started on first use, with the long
    barrier timeout); ``None`` in a plain run or once the main process works alone."""
    if _alone or launched_processes() <= 1:
        return None
    import torch
    from accelerate import PartialState

    # cpu=True where there is no GPU: otherwise accelerate finds no device for the processes
    # torchrun started and runs each one alone (gloo is the backend then, nccl on GPUs)
    return PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)


def process_share(items: list[T]) -> list[T]:
    """This process's share of ``items``, ``items[rank::processes]`` (all of them when not
    launched distributed). The shares of a list every process builds alike are disjoint and
    cover it."""
    state = _state()
    if state is None:
        return list(items)
    return list(items[state.process_index::state.num_processes])


def wait_for_everyone() -> None:
    """Wait until every process gets here (nothing to wait for when not launched distributed)."""
    state = _state()
    if state is not None:
        state.wait_for_everyone()


def is_main_process() -> bool:
    """Whether this process writes the outputs: the main one of a launched run, or the only one."""
    state = _state()
    return state is None or state.is_main_process


def process_label() -> str:
    """``" (process 2 of 4)"`` in a launched run, ``""`` otherwise (for progress bars). Read from
    the launcher's environment: it starts nothing (starting the process group is collective, and
    not every process may draw a progress bar)."""
    processes = launched_processes()
    if _alone or processes <= 1:
        return ""
    rank = next((int(value) for name in RANK_VARIABLES if (value := os.environ.get(name, "")).isdigit()), 0)
    return f" (process {rank + 1} of {processes})"


def main_process_continues() -> bool:
    """End the shared part of a launched run: ``False`` in every process but the main one,
    which should stop now; ``True`` in the main process (and in a plain run), which from here
    on works alone: :func:`process_share` gives it everything and :func:`wait_for_everyone`
    returns at once, as the others are gone."""
    global _alone
    if not is_main_process():
        return False
    _alone = True
    return True


__all__ = ["BARRIER_TIMEOUT", "is_main_process", "launched_processes", "main_process_continues", "process_label",
           "process_share", "wait_for_everyone"]
