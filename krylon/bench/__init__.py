"""Benchmark suites behind ``krylon bench`` (not tests: they measure speed and accuracy).

Each family registers one suite here: a module of this package with

* ``SIZES``, keyed ``"quick"`` (a laptop CPU in seconds), ``"default"`` and ``"paper"`` (the papers' scales);
* ``run(size, *, device, out, ...) -> dict``: runs the suite, prints its own tables, writes its JSON/PNGs
  under ``out`` and returns the result (keyword options it does not declare are not passed to it);
* ``summary(result) -> list[dict]``: its rows of the common summary, built with
  :func:`krylon.bench.summary.compare` (krylon against its best peer, ``ratio > 1`` = krylon better).

``krylon bench`` (or ``krylon bench all``) runs every suite of ``SUITES`` in this order and prints one table;
``EXTRA_SUITES`` run only when named (``krylon bench distributed``, ``krylon bench ddp``).
"""

from __future__ import annotations

import importlib

SUITES = {  # name -> module of this package; one line per family
    "krylov": ".krylov",  # matrix-free CG vs scipy cg / pyamg; batched vs sequential right-hand sides
    "dcdm": ".dcdm",  # learned conjugate directions vs CG, IC0-, DST-, pyamg-PCG on unseen obstacle scenes
    "fno": ".fno",  # neural operators: krylon's training vs neuraloperator's Trainer (Darcy); SFNO + Spectral-Refiner (NS)
    "dds": ".dds",  # DDS with the shipped diffusion prior vs DPS, CG-SENSE/FBP, TV on MRI and CT (64x64)
    "medida": ".medida",  # model-error discovery, KS paper cases: krylon MEDIDA (RVM) vs pysindy PDE-FIND on the same data
}

EXTRA_SUITES = {  # run by name only, not by ``krylon bench all``: they launch several processes each
    "distributed": ".distributed",  # weak scaling of domain-decomposed CG on 1, 2, 4 torchrun ranks vs one process
    "ddp": ".ddp",  # data-parallel training: krylon train fno per epoch on 1 process vs N torchrun ranks
}


def load(name: str):
    """The module of suite ``name`` (imported on first use: suites import torch, scipy, matplotlib)."""
    suites = {**SUITES, **EXTRA_SUITES}
    if name not in suites:
        raise ValueError(f"unknown benchmark suite {name!r}; registered: {', '.join(suites)}")
    return importlib.import_module(suites[name], __name__)
