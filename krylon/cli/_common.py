"""What several ``krylon`` sub-commands share."""

from __future__ import annotations

import contextlib
import functools
import os
import sys


def command_line() -> str:
    """The command as the user typed it, for the records written next to results."""
    return "krylon " + " ".join(sys.argv[1:])


# ----------------------------------------------------------------------------- torchrun
def torchrun_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def ranks(handler):
    """Let a ``train``/``generate`` handler run under ``torchrun``: one process per rank, joined in a group.

    Without torchrun nothing changes.  Under it the process joins torchrun's group before the handler runs -- NCCL
    when the command's ``--device`` is a GPU (each rank then takes GPU ``LOCAL_RANK``), gloo on the CPU -- and
    leaves it afterwards; ``args.device`` becomes this rank's device and ranks other than 0 print nothing (the
    library reduces the metrics, so rank 0's output is the run's).
    """

    @functools.wraps(handler)
    def run(args) -> int:
        if torchrun_world() <= 1:
            return handler(args)
        import torch

        from ..kernels import backend, distributed

        device = backend.resolve_device(getattr(args, "device", None)) or torch.device("cpu")
        distributed.init_from_env(backend="nccl" if device.type == "cuda" else "gloo")
        if hasattr(args, "device"):
            args.device = str(distributed.device() if device.type == "cuda" else device)
        try:
            with open(os.devnull, "w") as null, (contextlib.redirect_stdout(null) if distributed.rank()
                                                 else contextlib.nullcontext()):
                return handler(args)
        finally:
            distributed.shutdown()

    return run


def main_rank() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    from ..kernels import distributed

    return distributed.rank() == 0


def sequential_only(what: str) -> None:
    """Refuse ``torchrun`` for a command that cannot be split over processes (every rank raises alike)."""
    if torchrun_world() > 1:
        raise ValueError(f"{what} is one sequential computation and cannot be split over {torchrun_world()} "
                         "processes: run it without torchrun")
