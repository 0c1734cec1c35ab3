r"""Learning solution operators from data: fit, refine (Spectral-Refiner), evaluate, predict, plot.

:class:`OperatorLearner` wraps any ``nn.Module`` that maps an input field ``x`` of shape ``(B, C_in, *grid)`` to
an output field ``y`` of shape ``(B, C_out, *grid')`` -- an FNO, an SFNO whose last axis is time, or a network
of your own -- and trains it through the one training loop (:func:`krylon.solvers.training.train`).  It takes
torch Datasets of dicts ``{"x", "y"}`` (what :func:`krylon.datasets.open_dataset` returns); files are opened by
the caller.

Fields are compared in physical units: the network sees per-channel normalised inputs and its output is
decoded with the target normaliser before the loss, so losses, metrics and predictions mean the same whatever
the normalisation.  The normalisers are fitted on the training split only and saved in the checkpoint.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Callable

import torch

from ..kernels import distributed, validate
from ..operators.learned import registry
from . import training

__all__ = ["OperatorLearner", "NormalizedOperator", "relative_errors", "navier_stokes_residual",
           "NavierStokesResidual"]

_KIND = "krylon.OperatorLearner"
LOSSES = ("l2", "h1")


# ----------------------------------------------------------------------------- metrics
def relative_errors(pred: torch.Tensor, target: torch.Tensor, *, s: float = 0.0, time_axis: int | None = None,
                    per_step: bool = False) -> torch.Tensor:
    r"""Relative Sobolev errors :math:`\|p - y\|_{H^s} / \|y\|_{H^s}` per sample (and per time step).

    A per-sample view of :mod:`krylon.solvers.losses` (its quadrature and weight conventions): ``s = 0`` is the
    relative L2 error, ``s = 1`` the relative (spectral) H1 error on the unit periodic box.

    Parameters
    ----------
    pred, target : torch.Tensor
        ``(B, C, *space)`` or, with ``time_axis=-1``, ``(B, C, *space, T)``.
    s : float
        Sobolev index.
    time_axis : None or -1
        ``-1``: the last axis is time; the error of a trajectory is the Bochner :math:`L^2` in time ratio.
    per_step : bool
        With a time axis: one relative error per time step instead, shape ``(B, T)``.

    Returns
    -------
    torch.Tensor
        ``(B,)``, or ``(B, T)`` with ``per_step``.  Computed in the inputs' dtype (float64 for reporting, as
        :meth:`OperatorLearner.evaluate` does).
    """
    from . import losses

    if time_axis not in (None, -1):
        raise ValueError(f"time_axis must be None or -1, got {time_axis!r}")
    kw = dict(reduction="none", time_axis=time_axis, time_reduction="none" if per_step and time_axis else "l2")
    if s == 0:
        return losses.lp_loss(pred, target, **kw)
    return losses.sobolev_loss(pred, target, s=s, **kw)


class NavierStokesResidual:
    """``residual(w0, w1)`` for :meth:`OperatorLearner.refine`: one implicit Crank--Nicolson step of length
    ``interval`` (the time between two stored snapshots) of the 2-D Navier--Stokes vorticity equation of
    ``krylon generate ns2d`` data (forcing ``0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))``), on fields
    ``(B, 1, X, Y)``; :meth:`trajectory` gives every consecutive pair of a trajectory at once (each tendency
    computed once).  The equations are :class:`krylon.operators.pde.navier_stokes.NavierStokes2D`'s."""

    def __init__(self, viscosity: float, interval: float, *, lengths=1.0):
        from ..operators.pde.navier_stokes import NavierStokes2D

        interval = validate.real_number(interval, "interval")
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.interval = interval
        self.equations = NavierStokes2D(viscosity=viscosity, lengths=lengths)

    @classmethod
    def from_attrs(cls, attrs, where: str = "the data set") -> "NavierStokesResidual":
        """The residual of the data set whose attributes (``krylon.datasets.read_attrs(path)``) are ``attrs``:
        its ``viscosity``, the interval between its ``times`` and its ``lengths``."""
        times = attrs.get("times")
        if "viscosity" not in attrs or times is None or len(times) < 2:
            raise ValueError(f"{where} does not say its viscosity and snapshot times (attributes of krylon generate "
                             "ns2d data); a physics refinement needs the equations of the data: refine on the data "
                             "misfit (mode 'data') otherwise")
        return cls(float(attrs["viscosity"]), float(times[1] - times[0]),
                   lengths=tuple(float(v) for v in attrs.get("lengths", (1.0, 1.0))))

    def __call__(self, w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        return self.equations.crank_nicolson_residual(w0, w1, self.interval)

    def trajectory(self, w: torch.Tensor) -> torch.Tensor:
        """Residuals of all consecutive pairs of ``w (*batch, X, Y, T)``: ``(*batch, X, Y, T - 1)``."""
        return self.equations.trajectory_residual(w, self.interval)


def navier_stokes_residual(viscosity: float, interval: float, *, lengths=1.0) -> NavierStokesResidual:
    """:class:`NavierStokesResidual` ``(viscosity, interval, lengths=lengths)``."""
    return NavierStokesResidual(viscosity, interval, lengths=lengths)


def _loss_fn(loss, time_axis) -> Callable:
    """``loss(pred, target) -> scalar`` for ``"l2"``, ``"h1"`` or a callable."""
    if callable(loss):
        return loss
    from . import losses

    fn = {"l2": losses.lp_loss, "h1": losses.h1_loss}[validate.choice(loss, "loss", LOSSES)]
    return lambda pred, target: fn(pred, target, time_axis=time_axis)


# ----------------------------------------------------------------------------- normalised model
class NormalizedOperator(torch.nn.Module):
    """``decode_y(model(encode_x(x)))``: the network with its input and output normalisers."""

    def __init__(self, model: torch.nn.Module, x_normalizer=None, y_normalizer=None):
        super().__init__()
        self.model = model
        self.x_normalizer = x_normalizer
        self.y_normalizer = y_normalizer

    def forward(self, x: torch.Tensor, **kw) -> torch.Tensor:
        if self.x_normalizer is not None:
            x = self.x_normalizer.encode(x)
        y = self.model(x, **kw)
        if self.y_normalizer is not None:
            y = self.y_normalizer.decode(y)
        return y


def _fit_normalizer(dataset, key: str, indices=None):
    """A :class:`~krylon.operators.learned.normalizer.ChannelNormalizer` of ``dataset[i][key]`` (streamed).

    Under ``torchrun`` each rank reads a contiguous share of ``indices`` and the moments are merged over ranks.
    """
    from ..operators.learned.normalizer import ChannelNormalizer

    world = distributed.world_size()
    if world > 1:
        indices = list(range(len(dataset))) if indices is None else list(indices)
        indices = [indices[i] for i in distributed.split(len(indices), world, distributed.rank())]
    return ChannelNormalizer(int(dataset[0][key].shape[0])).fit(dataset, indices=indices, key=key,
                                                                across_ranks=world > 1)


class _Trajectories:
    """A view of a data set whose samples are ``{"xy"}``: the input and target frames of a sample, side by side."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        s = self.data[i]
        x, y = torch.as_tensor(s["x"]), torch.as_tensor(s["y"])
        return {"xy": torch.cat([x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1).to(x.dtype)], dim=1)}


def _normalizer_from_state(saved: dict, where: str):
    from ..operators.learned.normalizer import ChannelNormalizer

    try:
        norm = ChannelNormalizer(**json.loads(saved["config"]))
        norm.load_state_dict(saved["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{where}: the saved normaliser is damaged: {exc}") from exc
    return norm


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Real tensors to ``dtype``, complex ones to its complex counterpart, in place (``Module.to(float64)`` would
    drop the imaginary part of complex spectral weights); the parameter objects stay, so optimisers keep them."""
    cdtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}[dtype]
    for t in (*model.parameters(), *model.buffers()):
        if t.is_complex():
            t.data = t.data.to(cdtype)
        elif t.is_floating_point():
            t.data = t.data.to(dtype)


def _check_sample(dataset, name: str) -> None:
    if dataset is None:
        return
    if len(dataset) < 1:
        raise ValueError(f"the {name} data set is empty")
    s = dataset[0]
    if not isinstance(s, dict) or "x" not in s or "y" not in s:
        got = sorted(s) if isinstance(s, dict) else type(s).__name__
        raise ValueError(f"{name} samples must be dicts with 'x' and 'y' tensors; sample 0 has {got}")


def _minimise(objective, params, opts, bar=None, log=None) -> list:
    """Minimise ``objective()`` over ``params`` with ``opts["optimizer"]`` (Adam: ``opts["steps"]`` steps at
    ``opts["lr"]``; L-BFGS: ``steps`` iterations, strong-Wolfe line search); returns the objective per step."""
    steps, curve = opts["steps"], []

    def evaluate():
        opt.zero_grad(set_to_none=True)
        loss = objective()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite refinement loss at step {len(curve) + 1}; lower lr")
        loss.backward()
        return loss

    if opts["optimizer"] == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=0, tolerance_change=0)

        def closure():
            loss = evaluate()
            curve.append(float(loss.detach()))
            return loss

        opt.step(closure)  # the curve: every evaluation, line-search trials included
        if bar is not None:
            bar.update(steps)
    else:
        opt = torch.optim.Adam(params, lr=opts["lr"])
        for step in range(steps):
            curve.append(float(evaluate().detach()))
            opt.step()
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{curve[-1]:.4g}")
            if log is not None and (step + 1) % max(1, steps // 10) == 0:
                log(f"refine step {step + 1}/{steps}: loss {curve[-1]:.5g}")
    with torch.no_grad():
        curve.append(float(objective()))  # where it ended
    return curve


# ----------------------------------------------------------------------------- the learner
class OperatorLearner:
    """Fit, refine, evaluate and apply a neural operator ``x -> y``.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, C_in, *grid)`` to ``(B, C_out, *grid)`` (an SFNO: ``(B, C, X, Y, T_in)`` to
        ``(B, C, X, Y, T_out)``).  To be saved and loaded it needs a ``config`` dict and a class registered with
        :func:`krylon.operators.learned.registry.register_model` (krylon's FNO and SFNO are).
    loss : {"l2", "h1"} or callable
        Training loss: the relative L2 or (spectral) H1 error averaged over the batch, or ``fn(pred, target)``
        returning a scalar.  Custom callables are not saved with the checkpoint.
    normalize : bool
        Fit per-channel normalisers of ``x`` and ``y`` on the training split (default True).
    time_axis : None or -1
        ``-1`` when the last axis of the fields is time (SFNO): errors are reported per time step.

    Examples
    --------
    >>> learner = OperatorLearner(FNO(n_modes=(16, 16), in_channels=1, out_channels=1, hidden_channels=32))
    >>> history = learner.fit(train_set, val_set, epochs=20, out_dir="runs/darcy")       # doctest: +SKIP
    >>> learner.evaluate(test_set)["l2"]                                                 # doctest: +SKIP
    >>> learner = OperatorLearner.load("runs/darcy/model.pt")                            # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, *, loss="l2", normalize: bool = True, time_axis: int | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss):
            validate.choice(loss, "loss", LOSSES)
        if time_axis not in (None, -1):
            raise ValueError(f"time_axis must be None or -1 (time last), got {time_axis!r}")
        self.model = model
        self.loss = loss
        self.normalize = validate.boolean(normalize, "normalize")
        self.time_axis = time_axis
        self.x_normalizer = None
        self.y_normalizer = None
        self.history: dict = {}
        self.refine_history: list = []

    # ------------------------------------------------------------------ applying
    @property
    def operator(self) -> NormalizedOperator:
        """The network with its normalisers: physical ``x`` in, physical ``y`` out."""
        return NormalizedOperator(self.model, self.x_normalizer, self.y_normalizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forward(self, x: torch.Tensor, net: torch.nn.Module | None = None, **kw) -> torch.Tensor:
        # ``net``: the network the training loop hands the loss (a DDP wrapper under torchrun, whose forward
        # arms the gradient all-reduce); by default the model itself
        op = self.operator if net is None or net is self.model else NormalizedOperator(net, self.x_normalizer,
                                                                                       self.y_normalizer)
        try:
            return op(x, **kw)
        except RuntimeError as exc:  # a shape the layers cannot take: name it, whatever the layer said
            raise ValueError(f"{type(self.model).__name__} failed on an input of shape {tuple(x.shape)} "
                             f"(channels or resolution the model cannot take?): {exc}") from exc

    def predict(self, x, *, batch_size: int = 16, **kw) -> torch.Tensor:
        """The operator applied to ``x`` (``(B, C, *grid)``, or one sample ``(C, *grid)``), in eval mode, no grad.

        Any resolution the network accepts works (FNOs are zero-shot across resolutions).  Keyword arguments
        reach the network (e.g. ``out_steps=`` of an SFNO).
        """
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point field, got dtype {x.dtype}")
        single = x.dim() == self._sample_dims()
        if single:
            x = x.unsqueeze(0)
        validate.finite(x, "x")
        dt = next(self.model.parameters()).dtype
        self.model.eval()
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                outs.append(self._forward(x[i:i + batch_size].to(self.device, dt), **kw))
        y = torch.cat(outs)
        return y[0] if single else y

    def _sample_dims(self) -> int:
        cfg = getattr(self.model, "config", {}) or {}
        if "n_modes" in cfg:
            return 1 + len(cfg["n_modes"])
        if "modes" in cfg:  # SFNO: modes over (x, y, t)
            return 1 + len(cfg["modes"])
        return -1

    # ------------------------------------------------------------------ training
    def _batch_loss(self, fn):
        def loss(model, batch):  # data sets may store float64 or bool fields: the model's dtype decides
            dt = next(model.parameters()).dtype
            return fn(self._forward(batch["x"].to(dt), model), batch["y"].to(dt))
        return loss

    def fit(self, train, val=None, *, out_dir="runs/operator", progress: bool = True, log=print,
            hooks=(), name: str | None = None, plot: bool = True, **train_options) -> dict:
        """Train on ``train`` (a Dataset of ``{"x", "y"}``) through :func:`~krylon.solvers.training.train`.

        ``train_options`` are :class:`~krylon.solvers.training.TrainConfig` fields; the defaults here are the
        neural operators' (Adam, one-cycle schedule, batch 16, lr 1e-3, 10 epochs).  Validation (``val`` or a held-out
        share of ``train``) records the loss and the relative L2/H1 errors each epoch.  ``out_dir`` gets the
        training checkpoint (resumed if there), loss curves and ``model.pt`` (see :meth:`save`).
        Returns the history.
        """
        _check_sample(train, "training")
        _check_sample(val, "validation")
        opts = {"schedule": "onecycle", "max_grad_norm": None, "val_fraction": 0.0 if val is not None else 0.1}
        opts.update(train_options)
        config = training.TrainConfig(**opts)
        indices = None
        if val is None and config.val_fraction > 0:  # the split train() makes, so normalisers see training only
            indices = training.train_val_split(train, config.val_fraction, config.seed)[0].indices
        if self.normalize:
            if getattr(self.model, "residual", False):
                # the network adds its (encoded) last input frame to its (encoded) output: with one normaliser
                # for x and y that is "predict the change from the last frame" in physical units too
                shared = _fit_normalizer(_Trajectories(train), "xy", indices).to(self.device)
                self.x_normalizer, self.y_normalizer = shared, shared
            else:
                self.x_normalizer = _fit_normalizer(train, "x", indices).to(self.device)
                self.y_normalizer = _fit_normalizer(train, "y", indices).to(self.device)
        metrics = {"l2": self._batch_loss(lambda p, y: relative_errors(p, y, time_axis=self.time_axis).mean()),
                   "h1": self._batch_loss(lambda p, y: relative_errors(p, y, s=1.0, time_axis=self.time_axis).mean())}
        run = name or type(self.model).__name__.lower()
        self.history = training.train(self.model, self._batch_loss(_loss_fn(self.loss, self.time_axis)), train, out_dir,
                                      config, val=val, metrics=metrics, hooks=hooks, progress=progress, log=log,
                                      name=run, plot=plot)
        self.model.eval()
        if getattr(self.model, "config", None) is not None and distributed.rank() == 0:
            self.save(Path(out_dir) / "model.pt")  # one writer under torchrun: every rank holds the same weights
        distributed.barrier()
        return self.history

    # ------------------------------------------------------------------ Spectral-Refiner
    def refine(self, data, *, mode: str = "physics", residual: Callable | None = None, per_sample: bool | None = None,
               s: float = -1.0, alpha: float = 10 ** -1.5, steps: int | None = None, lr: float | None = None,
               optimizer: str = "adam", modes=None, bias_modes=None, time_padding: float = 1.0,
               drop_mean: bool = True, batch_size: int | None = None, grid=None, dtype=torch.float64,
               progress: bool = False, log=None) -> dict:
        r"""Spectral-Refiner's stage 2: correct predictions in a negative Sobolev norm of their physics residual.

        **Per sample** (``per_sample=True``, the default in physics mode; the paper's use: no target is needed, so
        each test input is refined on its own): the network is frozen and each sample's prediction ``p0`` gets an
        additive correction ``b``, a :class:`~krylon.operators.learned.spectral.SpectralBias` starting at zero --
        the zero-initialised bias of a widened output layer, one per sample -- over ``bias_modes`` (default every
        space mode of the grid and 6 time modes).  In time the correction is the first ``T`` of
        ``(1 + time_padding) T`` samples of one period (default 1: not periodic over the predicted window, so
        pulling the first step onto the last input does not pull the last step with it).  ``steps`` iterations
        (default 300 Adam steps at lr 3e-3, or ``optimizer="lbfgs"``: L-BFGS with a strong-Wolfe line search,
        ``steps`` iterations) minimise each sample's physics loss divided by its value at ``p0``.  Returns
        ``{"predictions": (N, C, *grid) in dtype, "loss": [...], "seconds", ...}``; the model is unchanged.

        **On a data set** (``per_sample=False``; always in data mode): every parameter is frozen except those
        of the last spectral layer, which is first widened to ``modes`` (default: the full grid of the first sample,
        see :meth:`_full_modes`) with its old weights copied in (``model.widen_last_layer(modes)``; an SFNO also
        gets its zero additive spectral bias over ``bias_modes`` there), and ``steps`` Adam iterations (default 50 at
        lr 1e-3) minimise the loss over batches of ``data``.  The model keeps the refined layer.

        The losses:

        * ``mode="physics"``: the time-integrated :math:`\|R(w_t, w_{t+1})\|_{H^s}^2`
          (:math:`\Delta t \sum_t` with :math:`\Delta t = 1/T`, the time quadrature of
          :func:`~krylon.solvers.losses.sobolev_loss`) of the predicted trajectory :math:`w` (the last input frame
          followed by the predicted frames), where ``residual(w0, w1)`` is the residual of one implicit time step of
          the generator's equations (for ``krylon generate ns2d`` data: :class:`NavierStokesResidual`, whose
          ``trajectory`` method computes all steps at once and is used when present).  With ``drop_mean`` (default)
          the space mean (the k = 0 mode) of the residual is left out: at negative ``s`` its weight
          :math:`\alpha^s` is so large that the mean drift of a prediction dominates the loss and stalls the fit
          of everything else.  Per sample, the mean of each predicted snapshot (per channel) is then set to the
          last input's -- what that mode of the residual is minimised by when the equations conserve the mean,
          as the vorticity equation on the torus does (its mean is zero) -- instead of being left as predicted.
          ``grid=(X, Y)`` evaluates the residual on that finer grid (the trajectory spectrally interpolated:
          exact for the band-limited prediction); default ``None``, the data grid -- the paper uses 256^2 for
          64^2 data, 16x the cost.
        * ``mode="data"``: :math:`\|p - y\|_{H^s}^2 / \|y\|_{H^s}^2` (the data misfit).

        The norm is :func:`krylon.solvers.losses.sobolev_loss`'s: :math:`\|u\|_{H^s}^2 = V \sum_k (\alpha +
        |k|^2)^{s} |\hat u_k|^2` on the unit box (angular :math:`k`), :math:`\alpha = 10^{-1.5}`.  (Spectral-Refiner's
        code weights the coefficients by :math:`(\alpha + |k|^2)^{-1/4}`, which is ``s = -0.5`` here.)  Refinement
        runs in ``dtype`` (float64, as the paper); the model is returned to its own dtype afterwards.
        """
        mode = validate.choice(mode, "mode", ("physics", "data"))
        per_sample = mode == "physics" if per_sample is None else validate.boolean(per_sample, "per_sample")
        if per_sample and mode != "physics":
            raise ValueError("per-sample refinement uses no targets: it needs mode='physics' (data mode refines the "
                             "model on a data set: per_sample=False)")
        steps = validate.integer((300 if per_sample else 50) if steps is None else steps, "steps", minimum=1)
        batch_size = validate.integer((8 if per_sample else 4) if batch_size is None else batch_size, "batch_size",
                                      minimum=1)
        lr = validate.real_number((3e-3 if per_sample else 1e-3) if lr is None else lr, "lr")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        optimizer = validate.choice(optimizer, "optimizer", ("adam", "lbfgs"))
        if optimizer == "lbfgs" and not per_sample:
            raise ValueError("optimizer='lbfgs' needs per_sample=True (a fixed objective: on a data set each step "
                             "sees another batch)")
        time_padding = validate.real_number(time_padding, "time_padding")
        if not 0 <= time_padding <= 16:
            raise ValueError(f"time_padding must be in [0, 16], got {time_padding!r}")
        drop_mean = validate.boolean(drop_mean, "drop_mean")
        if grid is not None:
            grid = validate.shape(grid, "grid")
            if len(grid) != 2 or any(n % 2 for n in grid):
                raise ValueError(f"grid must be two even sizes (X, Y), got {grid}")
        if mode == "physics" and not callable(residual):
            raise ValueError("refine(mode='physics') needs residual=, a callable (w0, w1) -> the residual of one "
                             "implicit step (e.g. from krylon.operators.pde); or use mode='data'")
        from .losses import sobolev_loss

        def hs2(u, target=None):  # squared H^s norm per sample (time: integrated), relative with a target
            return sobolev_loss(u, target, s=s, alpha=alpha, squared=True, reduction="none",
                                time_axis=self.time_axis)

        def physics(x, pred):  # (B,)
            return self._physics_loss(x, pred, residual, hs2, grid, drop_mean)

        opts = {"mode": mode, "s": s, "alpha": alpha, "steps": steps, "lr": lr, "optimizer": optimizer,
                "drop_mean": drop_mean, "grid": None if grid is None else list(grid)}
        if per_sample:
            x = data if isinstance(data, torch.Tensor) else None
            if x is None:
                _check_sample(data, "refinement")
                x = torch.stack([torch.as_tensor(data[i]["x"]) for i in range(len(data))])
            if not x.is_floating_point():
                raise TypeError(f"the inputs to refine must be floating-point fields, got dtype {x.dtype}")
            validate.finite(x, "the inputs to refine")
            return self._refine_samples(x, physics, bias_modes, time_padding, batch_size, dtype, progress, log,
                                        opts)
        _check_sample(data, "refinement")
        if not hasattr(self.model, "widen_last_layer"):
            raise TypeError(f"{type(self.model).__name__} has no widen_last_layer(modes); refinement needs a "
                            "spectral model (krylon's FNO or SFNO)")
        sample = data[0]
        if modes is None:
            modes = self._full_modes(sample)
        widen = {}
        if "bias_modes" in inspect.signature(self.model.widen_last_layer).parameters:
            widen["bias_modes"] = (tuple(bias_modes) if bias_modes is not None else
                                   self._bias_modes(tuple(torch.as_tensor(sample["y"]).shape[1:])))
        own_dtype = next(self.model.parameters()).dtype
        flags = {p: p.requires_grad for p in self.model.parameters()}  # restored afterwards, whatever happens
        try:
            params = list(self.model.widen_last_layer(tuple(modes), **widen))
            if not params:
                raise ValueError(f"{type(self.model).__name__}.widen_last_layer returned no parameters to refine")
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            return self._refine_loop(data, params, hs2, physics, modes, batch_size, dtype, own_dtype, progress, log,
                                     opts)
        finally:
            for p in self.model.parameters():  # the new layer's parameters stay trainable
                p.requires_grad_(flags.get(p, True))

    def _bias_modes(self, grid) -> tuple:
        """Default modes of a refinement's additive correction on a sample grid ``grid``: every space mode and, for
        trajectories (time last), 6 time modes of the (padded) window."""
        if self.time_axis == -1:
            return tuple(n // 2 for n in grid[:-1]) + (6,)
        return tuple(n // 2 for n in grid[:-1]) + (grid[-1] // 2 + 1,)

    def _refine_samples(self, x, physics, bias_modes, time_padding, batch_size, dtype, progress, log,
                        opts) -> dict:
        """Per-sample refinement (see :meth:`refine`): a zero-initialised spectral correction per sample."""
        drop_mean = opts["drop_mean"]
        from ..operators.learned.spectral import SpectralBias

        single = x.dim() == self._sample_dims()
        if single:
            x = x.unsqueeze(0)
        if bias_modes is not None:
            bias_modes = validate.shape(bias_modes, "bias_modes")
        preds, curves, n_params = [], [], 0
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=opts["steps"] * ((len(x) + batch_size - 1) // batch_size), desc="refine", leave=False)
        try:
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(self.device, dtype)
                p0 = self.predict(xb, batch_size=batch_size).to(dtype)
                if drop_mean and self.time_axis == -1:  # the mean the loss no longer sees: the last input's
                    space = tuple(range(2, p0.dim() - 1))
                    p0 = p0 - p0.mean(dim=space, keepdim=True) + xb[..., -1:].mean(dim=space, keepdim=True)
                grid = tuple(p0.shape[2:])
                window = grid[-1] + round(time_padding * grid[-1]) if self.time_axis == -1 else None
                if bias_modes is None:
                    bias_modes = self._bias_modes(grid)
                if len(bias_modes) != len(grid):
                    raise ValueError(f"bias_modes must have {len(grid)} entries (one per axis of the output {grid}), "
                                     f"got {bias_modes}")
                bias = SpectralBias(p0.shape[1], bias_modes, batch=(len(xb),)).to(self.device, dtype)
                n_params = bias.coeffs[0].numel()

                def corrected():
                    b = bias(grid, window)
                    if drop_mean and self.time_axis == -1:  # the mean stays the last input's
                        b = b - b.mean(dim=tuple(range(2, b.dim() - 1)), keepdim=True)
                    return p0 + b

                def losses_now():
                    return physics(xb, corrected())

                with torch.no_grad():  # each sample's loss is measured against its own starting value
                    scale = 1 / losses_now().clamp_min(torch.finfo(dtype).tiny)
                curve = _minimise(lambda: (losses_now() * scale).sum() / len(xb), [bias.coeffs], opts, bar, log)
                curves.append((curve, len(xb)))
                with torch.no_grad():
                    preds.append(corrected().cpu())
        finally:
            if bar is not None:
                bar.close()
        n = sum(w for _, w in curves)
        loss = [sum(c[k] * w for c, w in curves if k < len(c)) / n for k in range(max(len(c) for c, _ in curves))]
        pred = torch.cat(preds)
        return {"predictions": pred[0] if single else pred, "loss": loss, "seconds": time.perf_counter() - t0,
                "samples": len(x), "parameters": n_params, "per_sample": True, "bias_modes": list(bias_modes),
                "time_padding": time_padding, **opts}

    def _refine_loop(self, data, params, hs2, physics, modes, batch_size, dtype, own_dtype, progress, log,
                     opts) -> dict:
        _cast(self.model, dtype)  # the normalisers keep float64 statistics and compute in the input's dtype
        opt = torch.optim.Adam(params, lr=opts["lr"])
        steps = opts["steps"]
        from torch.utils.data import DataLoader

        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
        losses = []
        t0 = time.perf_counter()
        self.model.eval()  # no dropout / batch statistics while fine-tuning one layer
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="refine", leave=False)
        it = iter(loader)
        try:
            for step in range(steps):
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                x, y = batch["x"].to(self.device, dtype), batch["y"].to(self.device, dtype)
                pred = self._forward(x)
                loss = (hs2(pred, y) if opts["mode"] == "data" else physics(x, pred)).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite refinement loss at step {step + 1}; lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update()
                    bar.set_postfix(loss=f"{losses[-1]:.4g}")
                if log is not None and (step + 1) % max(1, steps // 10) == 0:
                    log(f"refine step {step + 1}/{steps}: loss {losses[-1]:.5g}")
        finally:
            if bar is not None:
                bar.close()
            _cast(self.model, own_dtype)
        result = {"loss": losses, "seconds": time.perf_counter() - t0, "parameters": sum(p.numel() for p in params),
                  "modes": list(modes), "per_sample": False,
                  "bias_modes": getattr(self.model, "config", {}).get("last_bias_modes"), **opts}
        self.refine_history.append({k: v for k, v in result.items() if k != "loss"} | {"final_loss": losses[-1]})
        return result

    def _full_modes(self, sample) -> tuple:
        """Every mode of the sample's grid in the model's convention: a ``full_modes(grid)`` method if it has one;
        neuraloperator's ``n_modes`` (all frequencies of an axis = its length); SFNO's ``modes`` (half the grid in
        space, every rfft mode of the ``in_steps`` input steps in time)."""
        grid = tuple(sample["y"].shape[1:])
        if hasattr(self.model, "full_modes"):
            return tuple(self.model.full_modes(grid))
        cfg = getattr(self.model, "config", None) or {}
        if "n_modes" in cfg:
            return grid[:len(cfg["n_modes"])]
        if "modes" in cfg and "in_steps" in cfg:
            return tuple(n // 2 for n in grid[:-1]) + (cfg["in_steps"] // 2 + 1,)
        raise ValueError(f"cannot tell the full-grid modes of {type(self.model).__name__}; pass modes=")

    def _physics_loss(self, x, pred, residual, hs2, grid=None, drop_mean=True):
        """The time-integrated ``||R(w_t, w_{t+1})||^2_{H^s}`` of the predicted trajectory, per sample ``(B,)``;
        ``drop_mean``: without the residual's space mean (its k = 0 mode)."""
        from ..operators.pde.navier_stokes import spectral_resample

        if self.time_axis != -1:
            if grid is not None:
                x, pred = spectral_resample(x, grid), spectral_resample(pred, grid)
            r = residual(x, pred)
            space = tuple(range(2, r.dim()))
        else:
            w = torch.cat([x[..., -1:], pred], dim=-1)  # (B, C, X, Y, T + 1)
            if grid is not None:  # interpolate each frame onto the finer grid (exact for band-limited frames)
                w = spectral_resample(w.movedim(-1, -3), grid).movedim(-3, -1)
            if hasattr(residual, "trajectory"):
                r = residual.trajectory(w)
            else:
                r = torch.stack([residual(w[..., t], w[..., t + 1]) for t in range(w.shape[-1] - 1)], dim=-1)
            space = tuple(range(2, r.dim() - 1))
        if drop_mean:
            r = r - r.mean(dim=space, keepdim=True)
        return hs2(r)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, dataset, *, batch_size: int = 16, refine: dict | None = None, **kw) -> dict:
        """Relative L2 and H1 errors of the predictions on ``dataset`` (any resolution the model takes).

        ``refine``: evaluate the per-sample refined predictions instead -- a dict of :meth:`refine` options
        (``residual=`` at least; physics mode, per sample: no target is used), applied to each batch of inputs.
        Returns ``{"l2", "h1"}`` (means over samples), ``"l2_per_sample"``, ``"h1_per_sample"`` (lists) and, for
        time-dependent fields, ``"l2_per_step"``, ``"h1_per_step"`` (means over samples per time step), plus
        ``"samples"``, ``"resolution"`` and ``"seconds"`` (and with ``refine``: ``"refine_seconds"``, the time
        spent refining, and ``"refine_loss"``, the mean physics loss relative to the unrefined one at the end).
        """
        _check_sample(dataset, "evaluation")
        if refine is not None:
            if not isinstance(refine, dict):
                raise TypeError(f"refine must be a dict of refine() options (residual=... at least), got "
                                f"{type(refine).__name__}")
            refine = {**refine, "mode": "physics", "per_sample": True}
        from torch.utils.data import DataLoader

        l2, h1, l2_step, h1_step, refine_s, refine_loss = [], [], [], [], 0.0, []
        t0 = time.perf_counter()
        dt = next(self.model.parameters()).dtype
        for i, batch in enumerate(DataLoader(dataset, batch_size=batch_size)):
            x, y = batch["x"], batch["y"]
            for key, t in (("x", x), ("y", y)):
                if not torch.isfinite(t).all():
                    raise ValueError(f"non-finite values in '{key}' of evaluation batch {i} "
                                     f"(samples {i * batch_size}..{i * batch_size + len(t) - 1})")
            if refine is None:
                pred = self.predict(x.to(dt), batch_size=batch_size, **kw).to(y.device)
            else:
                res = self.refine(x, **refine)
                pred, refine_s = res["predictions"].to(y.device), refine_s + res["seconds"]
                refine_loss.append((res["loss"][-1], len(x)))
            if pred.shape != y.shape:
                raise ValueError(f"the model predicts shape {tuple(pred.shape[1:])} per sample but the targets of "
                                 f"{getattr(dataset, 'path', 'the evaluation data set')} have {tuple(y.shape[1:])}")
            pred, y = pred.double(), y.double()
            l2.append(relative_errors(pred, y, time_axis=self.time_axis))
            h1.append(relative_errors(pred, y, s=1.0, time_axis=self.time_axis))
            if self.time_axis == -1:
                l2_step.append(relative_errors(pred, y, time_axis=-1, per_step=True))
                h1_step.append(relative_errors(pred, y, s=1.0, time_axis=-1, per_step=True))
        l2, h1 = torch.cat(l2), torch.cat(h1)
        sample = dataset[0]["y"]
        out = {"samples": int(l2.shape[0]), "resolution": list(sample.shape[1:]),
               "seconds": time.perf_counter() - t0}
        if self.time_axis == -1:  # a sample's error is the Bochner ratio over its trajectory; per step: means
            out["l2_per_step"] = torch.cat(l2_step).mean(0).tolist()
            out["h1_per_step"] = torch.cat(h1_step).mean(0).tolist()
        out.update(l2=float(l2.mean()), h1=float(h1.mean()), l2_per_sample=l2.tolist(), h1_per_sample=h1.tolist())
        if refine is not None:
            out["refine_seconds"] = refine_s
            out["refine_loss"] = sum(v * n for v, n in refine_loss) / sum(n for _, n in refine_loss)
        return out

    def plot(self, dataset, path, *, index: int = 0, step: int = -1, channel: int = 0, refine: dict | None = None,
             **kw) -> Path:
        """PNG of truth / prediction / error for sample ``index`` (time step ``step`` of a trajectory);
        ``refine``: of the prediction refined per sample (:meth:`refine` options, as for :meth:`evaluate`)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not 0 <= index < len(dataset):
            raise ValueError(f"index {index} out of range for a data set of {len(dataset)} samples")
        sample = dataset[index]
        y = torch.as_tensor(sample["y"])
        x = torch.as_tensor(sample["x"]).to(next(self.model.parameters()).dtype)
        if refine is None:
            pred = self.predict(x, **kw).cpu()
        else:
            pred = self.refine(x, **{**refine, "mode": "physics", "per_sample": True})["predictions"].cpu()
        y, pred = y[channel], pred[channel]
        if self.time_axis == -1:
            y, pred = y[..., step], pred[..., step]
        if y.dim() != 2:
            raise ValueError(f"plot shows 2-D fields; sample {index} has a {y.dim()}-D field of shape {tuple(y.shape)}")
        err = (pred - y).numpy()
        y, pred = y.numpy(), pred.numpy()
        rel = float(relative_errors(torch.as_tensor(pred, dtype=torch.float64)[None, None],
                                    torch.as_tensor(y, dtype=torch.float64)[None, None])[0])
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        lim = max(abs(y).max(), abs(pred).max())
        for ax, field, title, kwargs in ((axes[0], y, "truth", dict(vmin=-lim, vmax=lim)),
                                         (axes[1], pred, "prediction", dict(vmin=-lim, vmax=lim)),
                                         (axes[2], err, f"error (rel. L2 {rel:.3g})", {})):
            im = ax.imshow(field.T, origin="lower", cmap="RdBu_r", **kwargs)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> Path:
        """Write the network, its config, the normalisers and the learner's options (``weights_only`` loadable)."""
        ckpt = registry.checkpoint(self.model)
        if "model" not in ckpt:
            raise TypeError(f"{type(self.model).__name__} is not a registered model class; register it with "
                            "krylon.operators.learned.registry.register_model to save it")
        ckpt["kind"] = _KIND
        ckpt["learner"] = json.dumps({"loss": self.loss if isinstance(self.loss, str) else "custom",
                                      "normalize": self.normalize, "time_axis": self.time_axis,
                                      "history": self.history, "refined": self.refine_history})
        ckpt["normalizers"] = {k: {"config": json.dumps(n.config), "state_dict": n.state_dict()}
                               for k, n in (("x", self.x_normalizer), ("y", self.y_normalizer)) if n is not None}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        registry.atomic_save(ckpt, path)
        return path

    @classmethod
    def load(cls, path, *, map_location="cpu") -> "OperatorLearner":
        """Rebuild a learner saved by :meth:`save` (``weights_only=True``); ``ValueError`` for any other file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        raw = registry.read_torch_file(path, str(path), map_location)
        if not isinstance(raw, dict) or raw.get("kind") != _KIND:
            what = raw.get("model", "no model class") if isinstance(raw, dict) else type(raw).__name__
            hint = " (a training checkpoint: use the model.pt next to it)" if isinstance(raw, dict) and "epoch" in raw else ""
            raise ValueError(f"{path} is not an operator learner's checkpoint (it holds {what}){hint}")
        model = registry.load_checkpoint(path, map_location=map_location)
        opts = json.loads(raw["learner"])
        loss = opts["loss"] if opts["loss"] in LOSSES else "l2"
        learner = cls(model, loss=loss, normalize=opts["normalize"], time_axis=opts["time_axis"])
        learner.history = opts.get("history", {})
        learner.refine_history = opts.get("refined", [])
        norms = raw.get("normalizers", {})
        if "x" in norms:
            learner.x_normalizer = _normalizer_from_state(norms["x"], str(path)).to(map_location)
        if "y" in norms:
            learner.y_normalizer = _normalizer_from_state(norms["y"], str(path)).to(map_location)
        return learner

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
