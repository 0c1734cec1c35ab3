"""DCDM: the deep conjugate direction method (Kaneda et al., ICML 2023).

Each iteration asks a network for a search direction from the normalised
residual, A-orthogonalises it against the last ``k`` directions, and takes the
exact line-search step:

    r = b - A x;  q = f(r / ||r||);  q <- q - sum_j p_j (p_j^T A q)/(p_j^T A p_j)
    alpha = q^T r / q^T A q;  x <- x + alpha q

With a perfect network ``f = A^{-1}`` one step solves the system; a good
approximation converges in a few dozen iterations whatever the grid size.
One matrix-vector product per iteration: ``A q`` is orthogonalised with the
same coefficients as ``q``, and the true residual is recomputed every
``check_every`` iterations and before convergence is reported.

krylon's multilevel extension (``coarse=``, ``augment=``) adds directions per
iteration -- the network's on coarser grids, then on the grid itself, then the
residual -- each computed from the residual the previous ones left and taken the
same way; it is what carries a network trained on small grids to large ones, and
it is the default (``variant="multilevel"``).  The paper's plain iteration is
``variant="paper"``.
"""

from __future__ import annotations

import torch

from ..kernels import linalg, validate
from ..operators import LinearOperator
from ..operators.learned import registry
from ..operators.learned.dcdm import DCDMNet, dirichlet_marker, input_channels, unit_rms
from ..operators.stencil import Diffusion, _StencilOperator
from .base import IterativeSolver, Problem, refused, with_default
from .driver import Driver, Step
from .preconditioners import Preconditioner
from .result import Status

__all__ = ["DCDM", "DCDMPreconditioner", "network_inputs", "VARIANTS", "AUGMENTED"]

VARIANTS = {
    "multilevel": {"k": 2, "augment": True, "coarse": "auto"},
    "paper": {"k": 2, "augment": False, "coarse": 0},
}
"""The iterations ``DCDM(model, variant=...)`` selects (defaults of ``k``, ``augment``, ``coarse``; each can be
overridden).  ``"multilevel"`` (the default, krylon's): per iteration the network's directions on every coarser
grid down to 16 cells per axis, coarsest first, then on the grid itself, then the residual, each computed from the
residual left by the ones before it, A-orthogonalised against them and the directions of the previous ``k = 2``
iterations and taken with an exact line search, so none can hurt.  ``"paper"``: Kaneda et al.'s iteration, one
network direction per iteration against the last ``k = 2``.  BENCHMARKS.md has both on unseen scenes."""


def network_inputs(A: LinearOperator, r: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The network's input channels for scaled residuals ``r`` (``(B, *grid)``) of the stencil operator ``A``.

    The fluid mask, Dirichlet marker and log-coefficient (of a :class:`~krylon.operators.Diffusion`) come from
    ``A``; the channels are assembled by :func:`krylon.operators.learned.dcdm.input_channels`, the function
    :func:`dcdm_loss` uses at training time.
    """
    fluid = torch.ones(A.shape_in, dtype=torch.bool) if A.obstacles is None else ~A.obstacles
    marker = dirichlet_marker(A.shape_in, A.bc) if in_channels >= 3 else None
    logk = torch.log(A.coefficient.detach()) if in_channels >= 4 and isinstance(A, Diffusion) else None
    return input_channels(r, fluid, marker, logk, in_channels=in_channels)


class DCDM(IterativeSolver):
    """Deep conjugate direction method with a convolutional network proposing directions.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, C, *grid)`` inputs (see :func:`network_inputs`) to ``(B, 1, *grid)``
        directions; usually a :class:`~krylon.operators.learned.dcdm.DCDMNet`.
    variant : {"multilevel", "paper"}
        Defaults of ``k``, ``augment`` and ``coarse`` (:data:`VARIANTS`): ``"multilevel"`` (the default:
        ``k=2, augment=True, coarse="auto"``), the configuration that converges on grids larger than the
        training grid; ``"paper"`` (``k=2, augment=False, coarse=0``), Kaneda et al.'s plain iteration.
        An option given explicitly overrides the variant's.
    k : int
        New directions are A-orthogonalised against those of the last ``k`` iterations (2 in the paper, where
        an iteration has one direction).
    coarse : int or "auto"
        Multilevel directions (krylon's addition; 0 = the paper's method): each iteration first searches along
        the network's directions for the residual restricted (2x2(x2) block means) to this many successively
        coarser grids (``"auto"``: down to 16 cells per axis), coarsest first, each interpolated back
        (:func:`prolong`) and computed from the residual left by the coarser ones -- like the upward leg of a
        multigrid V-cycle with the network as the coarse solver and smoother -- and then along its direction
        on the grid itself.  One matvec and a (smaller) network pass per level; ``res.extras["network_passes"]``
        counts the network evaluations of a solve (a batch of systems shares each).  The coarse levels hand the
        smooth part of the error to grids the size the network was trained on, so the iteration count grows
        little with the grid.
    augment : bool
        Also search along the residual each iteration (krylon's addition; off = the paper's method): the
        network's direction ``q`` and the residual ``r``, both A-orthogonalised against the stored directions
        and ``r`` against ``q``, give two exact line minimisations per iteration (one more matvec, no extra
        network pass).  With the residual in the search space every iteration is at least a
        steepest-descent step with momentum (with the network off it is CG), so components of the error the
        network does not see -- typically the smoothest ones on grids larger than the training grid -- are
        still reduced instead of stalling the iteration.
    stall_window : int
        A system whose residual has moved by less than 0.1 % per iteration (``|alpha| ||A q|| < 1e-3 ||r||``)
        for this many iterations in a row stops with status ``stagnation``: the network's directions have
        become (nearly) A-dependent on the previous ones, a fixed point the iteration cannot leave (the
        residual is outside what the network learned).  The extra directions of the default multilevel variant
        (residual and coarse-grid network directions) keep the iteration moving.
    rtol, atol, maxiter, callback, progress, check_every
        As for the Krylov solvers (``maxiter`` defaults to 100, the paper's budget).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import Laplacian
    >>> from krylon.operators.learned.dcdm import DCDMNet
    >>> solver = DCDM(DCDMNet(dim=2), rtol=1e-4)       # or DCDM.pretrained("poisson2d"), DCDM.load("runs/dcdm/dcdm.pt")
    >>> res = solver.solve(Laplacian((32, 32)), torch.rand(32, 32, dtype=torch.float64), maxiter=5)
    >>> res.x.shape
    torch.Size([32, 32])
    """

    name = "DCDM"

    @staticmethod
    def _coarse_option(value, name):
        """``coarse``: a number of coarse levels >= 0, ``"auto"``, or None (the variant's)."""
        if value is None or value == "auto":
            return value
        if isinstance(value, str):
            raise ValueError(f"{name} must be an integer >= 0 or 'auto', got {value!r}")
        return validate.integer(value, name, minimum=0)

    # k, augment and coarse default to None: the variant's (VARIANTS), whichever of them the caller did not set.
    # maxiter 100 is the paper's budget; a network pass dwarfs a host sync, so check every iteration
    OPTIONS = {**IterativeSolver.OPTIONS, "maxiter": with_default("maxiter", 100),
               "M": refused("DCDM takes no preconditioner M: the network is one (DCDM.preconditioner() lends it to "
                            "CG(M=..., flexible=True))"),
               "differentiable": with_default("differentiable", False), "sync_every": with_default("sync_every", 1),
               "variant": ("multilevel", lambda v, name: validate.choice(v, name, tuple(VARIANTS))),
               "k": (None, lambda v, name: None if v is None else validate.integer(v, name, minimum=0)),
               "augment": (None, lambda v, name: None if v is None else validate.boolean(v, name)),
               "coarse": (None, _coarse_option), "stall_window": (10, validate.integer)}

    def __init__(self, model: torch.nn.Module, **options):
        super().__init__(**options)
        self.model = model
        cfg = getattr(model, "config", {})
        self.dim = cfg.get("dim")
        self.in_channels = cfg.get("in_channels", 1)

    def _resolve(self, given: dict) -> dict:
        opts = super()._resolve(given)
        for key, value in VARIANTS[opts["variant"]].items():
            if opts[key] is None:
                opts[key] = value
        return opts

    @property
    def variant(self) -> str:
        return self.options["variant"]

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def pretrained(cls, name: str, *, map_location="cpu", **kw) -> "DCDM":
        """A solver with a shipped model, ``"poisson2d"`` or ``"poisson3d"`` (no download, ``weights_only=True``).

        ``kw``: solver options (default: the multilevel iteration; ``variant="paper"`` for the paper's).  The
        weights are found by :mod:`krylon.operators.learned.registry`; ``ValueError`` lists the known names.
        """
        return cls(registry.load_pretrained("dcdm", name, map_location=map_location), **kw)

    @classmethod
    def load(cls, path, map_location="cpu", **kw) -> "DCDM":
        """Rebuild a DCDM solver from a checkpoint written by :meth:`save` or ``krylon train dcdm``."""
        return cls(registry.load_checkpoint(path, map_location=map_location, default=DCDMNet, expect=DCDMNet), **kw)

    def save(self, path) -> None:
        """Write the network's checkpoint ``{"state_dict", "config", "model"}`` (loadable with ``weights_only=True``)."""
        registry.save_checkpoint(self.model, path)

    # ------------------------------------------------------------------ the iteration
    def _check_operator(self, A: LinearOperator):
        if not isinstance(A, _StencilOperator):
            raise TypeError(f"DCDM's network was trained on Laplacian/Diffusion stencils; got {type(A).__name__}. "
                            "Use CG (optionally with M=) for other operators.")
        if self.dim is not None and A.ndim != self.dim:
            raise ValueError(f"this DCDM model is {self.dim}-D but the operator acts on a {A.ndim}-D grid {A.shape_in}")

    def direction(self, A: LinearOperator, r: torch.Tensor) -> torch.Tensor:
        """The network's direction for residuals ``r`` (``(B, *grid)``), normalised input, masked to the fluid."""
        fluid = torch.ones(A.shape_in, dtype=torch.bool, device=r.device) if A.obstacles is None else ~A.obstacles
        x = unit_rms(r, fluid)
        p = next(self.model.parameters(), None)
        mdt = p.dtype if p is not None else x.dtype
        mdev = p.device if p is not None else x.device
        inp = network_inputs(A, x.to(dtype=mdt, device=mdev), self.in_channels)
        with torch.no_grad():
            q = self.model(inp)[:, 0].to(dtype=r.dtype, device=r.device)
        if A.obstacles is not None:
            q = q.masked_fill(A.obstacles, 0)
        return q

    def _run(self, prob: Problem, opts: dict):
        self._check_operator(prob.A)
        res = Driver(self.name, prob, opts).run(_DCDMStep(self, opts))
        if bool((res.status == Status.STAGNATION).any()):
            hint = STALL_HINT_MULTILEVEL if opts["augment"] or opts["coarse"] else STALL_HINT
            res.reason = res.reason.replace(Status.HINTS[Status.STAGNATION], hint)
        return res

    def _hierarchy(self, A: LinearOperator, levels, dtype, dev) -> list:
        """The coarse grids of the multilevel directions, finest first: ``[(pads, A_coarse, fluid_weight)]``.

        Level ``l`` has cells of ``2^l`` fine cells per axis (an odd axis is padded with one solid cell first);
        a coarse cell is solid only if all its children are.  ``fluid_weight`` is the coarse fluid indicator
        interpolated to the fine grid, the normaliser of :func:`prolong`.
        """
        from ..operators import Laplacian

        if levels == "auto":  # every coarser grid down to COARSEST_AUTO cells per axis
            levels, m = 0, min(A.shape_in)
            while m // 2 >= COARSEST_AUTO:
                m //= 2
                levels += 1
        nd = A.ndim_in
        solid = A.obstacles.to(dev) if A.obstacles is not None else torch.zeros(A.shape_in, dtype=torch.bool, device=dev)
        sc = solid[None, None].to(dtype)
        logk = None
        if isinstance(A, Diffusion) and self.in_channels >= 4:  # the network sees the coefficient: coarsen it
            logk = torch.log(A.coefficient.detach()).to(dtype=dtype, device=dev)[None, None]
        out = []
        for lv in range(1, levels + 1):
            if min(sc.shape[2:]) < 4:
                break
            pads = _pads(sc)
            sc = _pool(torch.nn.functional.pad(sc, pads, value=1.0), nd)
            mask = sc[0, 0] >= 1.0
            obst = mask if bool(mask.any()) else None
            cshape = tuple(sc.shape[2:])
            if logk is not None:  # geometric mean over the children
                logk = _pool(torch.nn.functional.pad(logk, pads, mode="replicate"), nd)
                Ac = Diffusion(torch.exp(logk[0, 0]), bc=A.bc, obstacles=obst, dtype=dtype, device=dev)
            else:
                Ac = Laplacian(cshape, bc=A.bc, obstacles=obst, dtype=dtype, device=dev)
            weight = prolong((~mask).to(dtype)[None], lv, A.shape_in)
            out.append((pads, Ac, weight))
        return out

    def _coarse_direction(self, A: LinearOperator, r: torch.Tensor, hierarchy: list, lv: int) -> torch.Tensor:
        """The network's direction for ``r`` restricted to coarse level ``lv`` (block means), interpolated back.

        The restriction's scale is irrelevant: :meth:`direction` normalises its input to unit RMS.

        The coarse direction is interpolated (bi/trilinearly between cell centres) and divided by the
        interpolated coarse fluid indicator, so solid coarse cells do not pull it towards zero (constants stay
        constant next to obstacles), then masked to the fine fluid.  It is only a search direction
        (A-orthogonalised, exact line search), so an imperfect transfer cannot hurt.
        """
        nd = A.ndim_in
        rc = r.unsqueeze(1)
        for pads, _, _ in hierarchy[:lv]:
            rc = _pool(torch.nn.functional.pad(rc, pads), nd)
        _, Ac, weight = hierarchy[lv - 1]
        q = prolong(self.direction(Ac, rc[:, 0]), lv, A.shape_in) / weight.clamp_min(1e-3)
        return q.masked_fill(A.obstacles, 0) if A.obstacles is not None else q

    def preconditioner(self) -> "DCDMPreconditioner":
        """This solver's network as a preconditioner for ``CG(M=..., flexible=True)``."""
        return DCDMPreconditioner(self)


AUGMENTED = dict(VARIANTS["multilevel"])
"""The options of the default ``variant="multilevel"`` (once spelled out as ``DCDM(model, **AUGMENTED)``, "DCDM+r";
kept so such code still runs -- ``DCDM(model)`` is the same iteration now)."""

COARSEST_AUTO = 16  # coarse="auto": coarse-level directions down to grids of this many cells per axis

STALL_MOVE = 1e-3  # relative residual change per iteration below which an iteration counts as stalled
STALL_HINT = ("DCDM stalled: the network's directions stopped reducing the residual (the residual is outside "
              "what the network learned); the multilevel iteration, DCDM(model) (variant='multilevel', the "
              "default: coarse-grid and residual directions), keeps making progress, or retrain the network")
STALL_HINT_MULTILEVEL = ("DCDM stalled even with coarse-grid and residual directions: the true residual stopped "
                         "falling (the rounding floor of the dtype, or an operator the network was not trained "
                         "for); loosen rtol, use float64, or fall back to CG(M=SpectralPoisson()) / CG(M=IC0())")


class _DCDMStep(Step):
    """One DCDM iteration: the candidate directions (coarse-level network directions, the network's direction,
    the residual), each A-orthogonalised against the stored and earlier ones and taken by an exact line search.
    """

    replaces = True

    def __init__(self, solver: DCDM, opts: dict):
        self.solver, self.kdirs, self.stall_window = solver, opts["k"], opts["stall_window"]
        self.augment, self.coarse = opts["augment"], opts["coarse"]

    def init(self, drv, x):
        self.x, self.r = drv.initial(x)
        return drv.norm(self.r, drv.nd_in)

    def start(self, drv):
        A, b = drv.A, drv.b
        self.hierarchy = self.solver._hierarchy(A, self.coarse, b.dtype, b.device) if self.coarse else []
        # 0: the network on the grid itself; l >= 1: on coarse level l; None: the residual
        self.levels = list(range(len(self.hierarchy), 0, -1)) + [0] + ([None] if self.augment else [])
        self.n_passes = 0
        self.dep_tol = torch.finfo(drv.rnorm.dtype).eps ** 0.5
        self.P, self.AP, self.PAP = [], [], []
        self.since_moved = torch.zeros(drv.batch, dtype=torch.int64, device=b.device)

    def _direction(self, A, r, lv):
        """The network's direction on level ``lv`` for residuals of any batch shape."""
        flat = r.reshape((-1,) + A.shape_in)
        d = self.solver.direction(A, flat) if lv == 0 else self.solver._coarse_direction(A, flat, self.hierarchy, lv)
        return d.reshape(r.shape)

    def step(self, drv, k):
        A, nd = drv.A, drv.nd_in
        E = lambda t: linalg.expand(t, nd)  # noqa: E731
        r = self.r
        self.rnorm_prev = drv.rnorm
        # candidate directions, each computed from the residual left by the ones before it (so the iteration
        # is multiplicative, like a multigrid cycle): the network's directions on the coarse grids, coarsest
        # first, then on the grid itself, then the residual (all but the network's direction on the grid
        # itself are krylon's additions).  Each is A-orthogonalised against the stored and earlier directions
        # and taken with an exact line search at once.  What is left after projecting out a direction that
        # lies in the span is rounding noise of relative size ~eps * cond; below sqrt(eps) of the original
        # energy norm (dep_tol) it counts as dependent.
        # systems that meet a NaN direction or indefiniteness take no further step this iteration; they are
        # stopped in advance(), after the driver has recorded the residual their earlier steps left
        nanq = torch.zeros_like(drv.active)
        indef = torch.zeros_like(drv.active)
        dependent = drv.active.clone()
        new_dirs = []
        move = torch.zeros_like(drv.rnorm)
        for lv in self.levels:
            if lv is None:  # the residual
                d = r.clone()
            else:
                d = self._direction(A, r, lv)
                finite = torch.isfinite(d).flatten(-nd).all(dim=-1)
                if not bool(finite.all()):  # a zero direction instead: no step, and x stays finite
                    nanq = nanq | (drv.active & ~finite)
                    d = torch.where(E(finite), d, torch.zeros_like(d))
                self.n_passes += 1
            Ad = drv.apply(A, d)
            dAd0 = drv.dot(d, Ad, nd).real
            # d^T A d <= 0 before orthogonalisation: the operator is not positive definite; after it, a
            # (numerically) vanishing d^T A d means d lies in the span of the stored and earlier new
            # directions -- if all candidates do, the iteration cannot move: a stall, not indefiniteness
            indef = indef | (drv.active & (dAd0 <= 0) & (d.flatten(-nd).abs().amax(dim=-1) > 0))
            d, Ad, dAd = linalg.a_orthogonalize(d, self.P + [t[0] for t in new_dirs], self.AP + [t[1] for t in new_dirs],
                                                nd, a_norms=self.PAP + [t[2] for t in new_dirs], a_q=Ad,
                                                inner=drv.dot)
            dep = ~(dAd > self.dep_tol * dAd0.abs())
            dependent = dependent & dep
            ok = drv.active & ~dep & ~indef & ~nanq
            alpha = torch.where(ok, drv.dot(d, r, nd) / torch.where(ok, dAd, torch.ones_like(dAd)), torch.zeros_like(dAd))
            self.x = self.x + E(alpha) * d
            r = r - E(alpha) * Ad
            move = move + alpha.abs() * drv.norm(Ad, nd)
            # systems that did not step store zero (skipped by a_orthogonalize): a dependent direction is
            # rounding noise and must not disturb later orthogonalisations
            new_dirs.append((torch.where(E(ok), d, torch.zeros_like(d)), torch.where(E(ok), Ad, torch.zeros_like(Ad)),
                             torch.where(ok, dAd, torch.zeros_like(dAd))))
        self.r, self.move = r, move
        self.halted = ((nanq, Status.NAN), (indef & ~nanq, Status.INDEFINITE), (dependent & ~nanq & ~indef, Status.STAGNATION))
        if self.kdirs > 0:  # the directions of the last k iterations
            for d, Ad, dAd in new_dirs:
                self.P.append(d)
                self.AP.append(Ad)
                self.PAP.append(dAd)
            keep = self.kdirs * len(new_dirs)
            del self.P[:-keep], self.AP[:-keep], self.PAP[:-keep]
        return drv.norm(r, nd)

    def advance(self, drv, k):
        for mask, code in self.halted:  # (unless the driver's check found them converged meanwhile)
            drv.stop(drv.active & mask, code)
        # a stall is a fixed point: the residual stops moving (|alpha| ||A q|| tiny next to ||r||) even though
        # it is far from converged.  (The residual norm itself is not monotone, like CG's.)
        moved = self.move > STALL_MOVE * self.rnorm_prev
        self.since_moved = torch.where(moved, torch.zeros_like(self.since_moved), self.since_moved + 1)
        drv.stop(drv.active & (self.since_moved >= self.stall_window), Status.STAGNATION)

    def extras(self, drv, rows):
        return {"network_passes": self.n_passes}


def _pads(u: torch.Tensor) -> list:
    """``F.pad`` widths that make every grid axis of ``(B, C, *grid)`` even (one cell at the high end)."""
    pads = []
    for n in reversed(u.shape[2:]):
        pads += [0, n % 2]
    return pads


def _pool(u: torch.Tensor, nd: int) -> torch.Tensor:
    """Means over 2x2(x2) blocks of ``(B, C, *grid)`` with even grid axes."""
    pool = torch.nn.functional.avg_pool2d if nd == 2 else torch.nn.functional.avg_pool3d
    return pool(u, 2)


def prolong(qc: torch.Tensor, level: int, shape) -> torch.Tensor:
    """Interpolate ``(B, *coarse)`` fields from grid level ``level`` (cells ``2^level`` fine cells wide) to ``shape``.

    Bi/trilinear interpolation between cell centres (``align_corners=False``; constant extrapolation at the
    walls), cropped to ``shape`` (the coarse grids pad odd axes at the high end).
    """
    nd = len(shape)
    mode = "bilinear" if nd == 2 else "trilinear"
    q = torch.nn.functional.interpolate(qc.unsqueeze(1), scale_factor=2 ** level, mode=mode, align_corners=False)
    return q[(slice(None), 0) + tuple(slice(0, n) for n in shape)]


class DCDMPreconditioner(Preconditioner):
    """A DCDM network used as a (nonlinear) preconditioner: ``z = +-f(r / rms(r))`` masked to the fluid.

    The sign is chosen so that ``r^T z > 0`` (the training loss does not fix it).

    The network is not a fixed linear map, so use it with flexible CG, ``CG(M=..., flexible=True)``;
    its output scale is arbitrary, which (flexible) CG does not mind.  It is set up per operator like the
    other preconditioners and refuses operators the network does not understand.
    """

    def __init__(self, solver: "DCDM", A: LinearOperator | None = None):
        self.solver = solver
        super().__init__(A)

    def setup(self, A: LinearOperator) -> "DCDMPreconditioner":
        self.solver._check_operator(A)
        self.A = A
        return self

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        A = self.A
        nd = A.ndim_in
        flat = r.reshape((-1,) + tuple(A.shape_in))
        z = self.solver.direction(A, flat)
        # the DCDM loss is invariant to the sign of q, so a network may have learned -A^{-1}: orient each
        # direction so that r^T z > 0, as a preconditioner's output must be
        # (a preconditioner, not a driver step: linalg's local dot is right, as _check_operator refuses fields
        # split across processes -- the network and its normalisation need the whole field)
        sign = torch.sign(linalg.dot(flat, z, nd).real)
        return (z * linalg.expand(torch.where(sign == 0, torch.ones_like(sign), sign), nd)).reshape(r.shape)


# ----------------------------------------------------------------------------- training

    def as_operator(self) -> LinearOperator:
        raise TypeError("a DCDM network is a nonlinear map (its sign and scale follow the residual), not a linear "
                        "operator; use it as CG(M=..., flexible=True)")



def batch_weights(fluid: torch.Tensor, bc_dirichlet: torch.Tensor, dtype=torch.float32):
    """Stencil weights for a batch of scenes with different obstacles and boundaries.

    ``fluid``: ``(B, *grid)`` masks; ``bc_dirichlet``: ``(B, 2 d)`` booleans, low/high side of each axis
    (True = Dirichlet, False = Neumann).
    """
    from ..kernels import stencil as st

    d = fluid.dim() - 1
    ws = []
    for i in range(fluid.shape[0]):
        flags = bc_dirichlet[i].tolist()
        bc = [tuple("dirichlet" if flags[2 * a + s] else "neumann" for s in (0, 1)) for a in range(d)]
        ws.append(st.stencil_weights(tuple(fluid.shape[1:]), 1.0, bc, solid=~fluid[i].bool(), dtype=dtype, device=fluid.device))
    return st.StencilWeights(diag=torch.stack([w.diag for w in ws]),
                             faces=[torch.stack([w.faces[a] for w in ws]) for a in range(d)],
                             wraps=[None] * d)


def dcdm_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Scale-invariant DCDM loss: ``mean_i || b_i - A_i q_i (q_i^T b_i)/(q_i^T A_i q_i) ||^2`` with ``q_i = f(b_i)``.

    The network sees ``b_i`` scaled by :func:`~krylon.operators.learned.dcdm.unit_rms` and its channels assembled
    by :func:`~krylon.operators.learned.dcdm.input_channels`, the functions :meth:`DCDM.direction` uses.

    ``batch`` holds ``b`` (unit-norm right-hand sides), ``fluid`` and ``dirichlet`` masks and ``bc_dirichlet``.
    """
    from ..kernels import stencil as st

    b, fluid = batch["b"], batch["fluid"].bool()
    nd = b.dim() - 1
    dt = next(model.parameters()).dtype
    dims = tuple(range(1, nd + 1))
    inp = input_channels(unit_rms(b.to(dt), fluid), fluid, batch["dirichlet"], in_channels=model.config["in_channels"])
    q = model(inp)[:, 0] * fluid.to(dt)
    W = batch_weights(fluid, batch["bc_dirichlet"], dtype=dt)
    Aq = st.apply_weights(q, W) * fluid.to(dt)
    qb = (q * b).sum(dims)
    qAq = (q * Aq).sum(dims).clamp_min(torch.finfo(dt).tiny)
    res = b - Aq * (qb / qAq).reshape((-1,) + (1,) * nd)
    return (res ** 2).sum(dims).mean()
