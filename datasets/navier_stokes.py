"""2-D Navier–Stokes trajectories: the time-stepping driver and the ``krylon generate ns2d`` data sets.

:func:`simulate` steps a :class:`~krylon.operators.pde.NavierStokes2D` with the one driver
:func:`krylon.solvers.timestepping.simulate` (snapshots time last, the initial state excluded, CNAB2 by default).
:func:`generate` writes the Spectral-Refiner / FNO recipe: Gaussian-random-field initial vorticity
(alpha 2.5, tau 7, FNO's amplitude ``sqrt(2) tau^1.5``: :func:`initial_amplitude`), simulated on a fine grid
with CNAB2 (Crank–Nicolson viscosity, Adams–Bashforth advection,
2/3 dealiasing), a warm-up, then ``t_in + t_out`` snapshots ``interval`` apart, stored coarse as
``x`` (1, X, Y, t_in) and ``y`` (1, X, Y, t_out), time last.  Coarsening is *spectral* (Fourier truncation:
the L2 projection on the coarse grid's modes), not strided subsampling.

Every sample's initial field is a pure function of ``(seed, sample index)``, and batches start at multiples of
the batch size, so an interrupted run resumes bit-identically and the data do not depend on where it stopped;
other batch sizes give the same data to rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..kernels import backend, validate
from ..operators.pde.navier_stokes import NavierStokes2D, spectral_resample
from ..solvers import timestepping
from ..solvers.timestepping import CNAB2, ETDRK4
from .hdf5 import DatasetWriter
from .presets import NS2D
from .random_fields import gaussian_random_field

__all__ = ["simulate", "initial_vorticity", "initial_amplitude", "generate", "PRESETS", "GENERATOR"]

GENERATOR = "krylon.datasets.navier_stokes.generate"
METHODS = {"cnab2": CNAB2, "etdrk4": ETDRK4}

PRESETS = NS2D  # size presets of generate (quick / paper), see krylon.datasets.presets


def _steps(t, dt: float, name: str) -> int:
    return timestepping.whole_steps(t, dt, name)


def simulate(model: NavierStokes2D, w0: torch.Tensor, t_end: float, dt: float, *,
             snapshots: int | Sequence[float] | None = None, method: str = "cnab2",
             callback: Callable[[int, torch.Tensor], None] | None = None,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Integrate vorticity fields ``w0 (*batch, X, Y)`` of ``model`` from ``t = 0`` to ``t_end`` with step ``dt``.

    Parameters
    ----------
    model : NavierStokes2D
    w0 : tensor (*batch, X, Y)
        Initial vorticity, real; its dtype (float64 or float32) and device are the computation's.
    t_end : float
        Final time, a multiple of ``dt``.
    dt : float
        Time step.
    snapshots : int or sequence of float, optional
        None: return the state at ``t_end``.  An int ``n``: the states at ``t_end k / n``, ``k = 1..n``.
        A sequence: the states at those times (increasing, in ``[0, t_end]``, multiples of ``dt``).
    method : "cnab2" or "etdrk4"
        Crank–Nicolson/Adams–Bashforth 2 (IMEX, the data sets' scheme) or exponential RK4.
    callback : callable(step, w_hat), optional
        Called after every step with the spectral state.
    transform : callable, optional
        Applied to each physical snapshot ``(*batch, X, Y)`` as it is taken (e.g. coarsening with
        :func:`~krylon.operators.pde.navier_stokes.spectral_resample`, so fine snapshots are never all held).

    Returns
    -------
    tensor
        ``(*batch, X, Y)`` at ``t_end``, or ``(*batch, X, Y, T)`` with the snapshots on the last axis.

    Examples
    --------
    >>> import torch
    >>> from krylon.operators.pde import NavierStokes2D
    >>> w = simulate(NavierStokes2D(), torch.zeros(2, 32, 32, dtype=torch.float64), 0.1, 0.01, snapshots=[0.05, 0.1])
    >>> w.shape
    torch.Size([2, 32, 32, 2])
    """
    if not isinstance(model, NavierStokes2D):
        raise TypeError(f"model must be a NavierStokes2D, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return timestepping.simulate(model, w0, t_end, dt, method=method, times=snapshots, callback=callback,
                                 transform=transform, time_axis="last")


def _sample_generator(seed: int, index: int) -> torch.Generator:
    """A generator for sample ``index`` alone: SeedSequence mixes (seed, index) without collisions."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def initial_amplitude(alpha: float = 2.5, tau: float = 7.0) -> float:
    """The GRF amplitude ``sigma = sqrt(2) tau^(alpha - 1)`` of the initial vorticity: FNO's, not the GRF default.

    FNO's ``GaussianRF`` (used for its and Spectral-Refiner's NS data) keeps the real part of a field with complex
    iid coefficients scaled by an explicit ``sqrt(2)``, which doubles the covariance ``sigma^2 (-Laplace +
    tau^2)^(-alpha)`` of :func:`~krylon.datasets.random_fields.gaussian_random_field`'s default
    ``sigma = tau^(alpha - d/2)``; the factor ``sqrt(2)`` here makes the data recipe theirs (pointwise variance
    0.070 at 64^2 for alpha 2.5, tau 7, instead of 0.035).
    """
    return math.sqrt(2.0) * tau ** (alpha - 1.0)


def initial_vorticity(seed: int, indices: Sequence[int], resolution: int, *, alpha: float = 2.5, tau: float = 7.0,
                      lengths=1.0) -> torch.Tensor:
    """The initial vorticities ``(len(indices), N, N)`` (float64, CPU) of the given samples of a data set.

    Mean-zero Gaussian random fields with covariance ``sigma^2 (-Laplace + tau^2)^(-alpha)`` and FNO's amplitude
    ``sigma =`` :func:`initial_amplitude` ``(alpha, tau)``, so the fields have the FNO / Spectral-Refiner data's
    statistics.
    """
    sigma = initial_amplitude(alpha, tau)
    return torch.stack([gaussian_random_field((resolution, resolution), alpha=alpha, tau=tau, sigma=sigma,
                                              lengths=lengths, generator=_sample_generator(seed, i)) for i in indices])


def generate(path, n: int, *, viscosity: float = 1e-3, resolution: int = 64, sim_resolution: int = 256,
             dt: float = 1e-3, warmup: float = 30.0, interval: float = 0.2, t_in: int = 10, t_out: int = 40,
             batch_size: int = 16, seed: int = 0, device=None, method: str = "cnab2", store_dtype: str = "float32",
             progress: bool = False, part=None) -> str:
    """Generate (or resume) a data set of ``n`` Navier–Stokes trajectories at ``path`` (krylon HDF5).

    Parameters
    ----------
    n : int
        Trajectories (samples).
    viscosity : float
        ``nu`` (default 1e-3); unit torus, forcing ``0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))``.
    resolution, sim_resolution : int
        Stored and simulated grid sizes per axis (even; ``sim_resolution >= resolution``).
    dt, warmup, interval : float
        Time step, time simulated before the first snapshot, time between snapshots (multiples of ``dt``).
    t_in, t_out : int
        Snapshots in the input ``x`` and in the target ``y`` (consecutive: the target follows the input).
    batch_size : int
        Trajectories simulated together as one tensor.
    seed : int
        Sample ``i`` starts from a field drawn with a generator seeded by ``(seed, i)``.
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when present); default CPU.
    store_dtype : "float32" or "float64"
        Precision on disk (the simulation runs in float64).
    part : (index, count), optional
        Write only that part of the samples (whole batches) to its own part file: one rank of a distributed run
        (:func:`krylon.datasets.parts.generate_sharded`).

    Returns
    -------
    The path of the finished file.

    Notes
    -----
    Fields ``x`` ``(1, X, Y, t_in)`` and ``y`` ``(1, X, Y, t_out)``; file attributes ``viscosity``, ``dt``,
    ``lengths``, ``times`` (all ``t_in + t_out`` snapshot times), ``interval``, ``t_in``, ``t_out``, ``resolution``,
    ``sim_resolution``, ``downsampling`` (``"spectral"``), ``forcing``.  CPU and GPU runs agree to rounding, not
    bit for bit.
    """
    n = validate.integer(n, "n")
    t_in, t_out = validate.integer(t_in, "t_in"), validate.integer(t_out, "t_out")
    batch_size = validate.integer(batch_size, "batch_size")
    resolution = validate.integer(resolution, "resolution", minimum=4)
    sim_resolution = validate.integer(sim_resolution, "sim_resolution", minimum=4)
    if resolution % 2 or sim_resolution % 2:
        raise ValueError(f"resolution and sim_resolution must be even, got {resolution} and {sim_resolution}")
    if sim_resolution < resolution:
        raise ValueError(f"sim_resolution ({sim_resolution}) must be >= resolution ({resolution}): simulate fine, store coarse")
    dt = validate.real_number(dt, "dt")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    first = _steps(warmup, dt, "warmup")
    every = _steps(interval, dt, "interval")
    if every < 1:
        raise ValueError(f"interval must be at least one time step, got {interval!r}")
    validate.choice(method, "method", tuple(METHODS))
    validate.choice(store_dtype, "store_dtype", ("float32", "float64"))
    model = NavierStokes2D(viscosity=viscosity)
    dev = backend.resolve_device(device) or torch.device("cpu")
    count = t_in + t_out
    times = [(first + k * every) * dt for k in range(count)]
    params = {"n": n, "viscosity": float(viscosity), "resolution": resolution, "sim_resolution": sim_resolution,
              "dt": dt, "warmup": float(warmup), "interval": float(interval), "t_in": t_in, "t_out": t_out,
              "method": method, "store_dtype": store_dtype, "alpha": 2.5, "tau": 7.0,
              "sigma": initial_amplitude(2.5, 7.0), "forcing": model.forcing_name,
              "dealias": model.dealias, "downsampling": "spectral"}
    fields = {"x": ((1, resolution, resolution, t_in), store_dtype), "y": ((1, resolution, resolution, t_out), store_dtype)}
    with DatasetWriter(path, n, fields, generator=GENERATOR, parameters=params, seed=seed, part=part,
                       granule=batch_size) as w:
        attrs = w.f.attrs
        attrs["viscosity"] = float(viscosity)
        attrs["dt"] = dt
        attrs["lengths"] = np.array(model.lengths)
        attrs["times"] = np.array(times)
        attrs["interval"] = float(interval)  # the time between snapshots (a Crank–Nicolson step of the data)
        attrs["t_in"], attrs["t_out"] = t_in, t_out
        attrs["resolution"] = resolution
        attrs["sim_resolution"] = sim_resolution
        attrs["downsampling"] = "spectral"
        attrs["forcing"] = "0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))"
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=w.stop - w.start, initial=w.n_written - w.start,
                       desc=f"ns2d {sim_resolution}^2 -> {resolution}^2", unit="traj")
        for indices in w.pending_batches(batch_size):
            w0 = initial_vorticity(seed, indices, sim_resolution).to(dev)
            hook = None
            if bar is not None:  # a batch can take long (hours at the paper's scale on a CPU): show its time
                hook = lambda step, _, b=bar: step % 200 or b.set_postfix_str(f"batch at t={step * dt:.1f}/{times[-1]:g}")  # noqa: E731
            coarse = simulate(model, w0, times[-1], dt, snapshots=times, method=method, callback=hook,
                              transform=lambda w: spectral_resample(w, (resolution, resolution)))  # (B, X, Y, T)
            coarse = coarse.unsqueeze(1).cpu().numpy().astype(store_dtype)
            for j, i in enumerate(indices):
                if i >= w.n_written:
                    w.write(i, {"x": coarse[j, ..., :t_in], "y": coarse[j, ..., t_in:]})
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
    return str(path)
