r"""Two-layer quasi-geostrophic turbulence on a beta plane, forced by relaxation to a jet (the MEDIDA-QG model).

The model of Mojgani, Chattopadhyay, Hassanzadeh (JAMES 2024) and of the Phillips-model codes it comes from,
in units where the deformation radius is 1 (``F = 1`` in each layer).  With streamfunctions ``psi_1`` (upper)
and ``psi_2`` (lower) and the potential-vorticity anomalies

.. math::

    q_1 = \nabla^2\psi_1 + (\psi_2 - \psi_1), \qquad q_2 = \nabla^2\psi_2 + (\psi_1 - \psi_2),

the state evolves as

.. math::

    \partial_t q_1 &= -c_J J(\psi_1, q_1) - \beta\,\partial_x\psi_1 + \tau_d(\psi_1 - \psi_2) - \tau_r \psi_R
                      - s(y)\,(q_1 - \overline{q_1}^x) - \nu(\partial_x^8 + \partial_y^8) q_1 \\
    \partial_t q_2 &= -c_J J(\psi_2, q_2) - \beta\,\partial_x\psi_2 - \tau_d(\psi_1 - \psi_2) + \tau_r \psi_R
                      - \tau_f \nabla^2\psi_2 - s(y)\,(q_2 - \overline{q_2}^x) - \nu(\partial_x^8 + \partial_y^8) q_2

with ``J(a, b) = a_x b_y - a_y b_x``.  ``tau_d``, ``tau_r`` (relaxation of the interface to the jet), ``tau_f``
(bottom friction) are *rates*, as in the papers' code (``tau_d = 0.01``, ``tau_f = 0.07``); ``tau_r`` defaults to
``tau_d`` (the paper's new cases set it apart to remove the jet forcing alone).

Domain (stated, as the issue asks): **doubly periodic** with a sponge, as the paper's code -- the channel's walls
are replaced by a sponge ``s(y) = sponge * sech^2(d(y)/sigma)`` (``d`` the distance to the ``y = +-L_y/2`` edge)
that damps the eddy (non-zonal) PV near the edges, and the jet profile of the baroclinic shear
``u_R(y) = U [sech^2(y/sigma) - sech^2(d(y)/sigma)]`` (a jet in the middle, an opposite one over the sponge, so
``psi_R = -int u_R dy`` is periodic).  Fields are ``(*batch, 2, n_y, n_x)`` (layer, ``y``, ``x``) on
``x in [-L_x/2, L_x/2)``, ``y in [-L_y/2, L_y/2)``; spectral states are ``rfft2`` of the PV anomaly, kept on the
modes of the 2/3 rule so the quadratic Jacobian is computed without aliasing (the truncated system conserves
energy and potential enstrophy exactly without forcing and dissipation; the paper padded by 3/2 instead).

Model errors are changed parameters or removed terms: :data:`CASES` names the paper's cases
(``QuasiGeostrophic.case(name)`` gives the true and the imperfect model).
"""

from __future__ import annotations

import torch

from ...kernels import backend, validate
from ...kernels.fft import dealias_mask, wavenumber_grid

__all__ = ["QuasiGeostrophic", "CASES", "PAPER", "LIBRARY_TERMS", "library_names"]

#: the 2024 paper's settings (grid (n_y, n_x), lengths (L_y, L_x), rates, hyperviscosity, jet, time step)
PAPER = {"shape": (192, 96), "lengths": (68.0, 46.0), "beta": 0.196, "tau_d": 0.01, "tau_f": 0.07, "nu": 1e-6,
         "jet": 1.0, "sigma": 3.5, "sponge": 1.0, "dt": 0.025, "filter": 0.04}

#: the imperfect model of each case: parameters changed from the truth's (the paper's cases 1001-1009)
CASES: dict[str, dict] = {
    "tau_d": {"tau_d": 0.11, "tau_r": 0.11},              # 1001 (3A): relaxation ten times too fast
    "tau_f": {"tau_f": 0.37},                             # 1006: friction too strong
    "tau_d+tau_f": {"tau_d": 0.11, "tau_r": 0.11, "tau_f": 0.37},  # 1002 (4A)
    "no_relaxation": {"tau_d": 0.0, "tau_r": 0.0},        # 1003: the whole relaxation removed
    "no_jet": {"tau_r": 0.0},                             # 1008: the jet forcing removed
    "no_friction": {"tau_f": 0.0},                        # 1007
    "jacobian": {"jacobian": 0.5},                        # 1004: advection at half strength
    "beta": {"beta": 0.0},                                # 1009: no beta effect
}

#: the library's base terms (each enters the q_1 or the q_2 equation): name -> what it is
LIBRARY_TERMS = ("lap(psi_1)", "lap(psi_2)", "psi_1", "psi_2", "psi_R", "dx(psi_1)", "dx(psi_2)", "dy(psi_1)",
                 "dy(psi_2)", "J(psi_1,q_1)", "J(psi_2,q_2)")


def library_names() -> tuple[str, ...]:
    """Names of the QG library's columns: ``"q1:psi_1"`` is ``psi_1`` in the ``q_1`` equation, and so on."""
    return tuple(f"q{layer}:{term}" for layer in (1, 2) for term in LIBRARY_TERMS)


def _rate(value, name: str) -> float:
    return validate.real_number(value, name, minimum=0.0)


class QuasiGeostrophic:
    r"""The two-layer QG model: spectral right-hand side, PV inversion, invariants, one-step forecasts.

    Parameters
    ----------
    shape : (int, int)
        Grid ``(n_y, n_x)``, even sizes (default the paper's 192 x 96).
    lengths : (float, float)
        Domain ``(L_y, L_x)`` in deformation radii (default 68 x 46).
    beta, tau_d, tau_r, tau_f, nu : float
        Beta; interface relaxation rate on ``psi_1 - psi_2`` and on the jet ``psi_R`` (``tau_r`` defaults to
        ``tau_d``); bottom-friction rate; hyperviscosity on ``k^8 + l^8``.
    jet, sigma : float
        Jet speed ``U`` and width of the ``sech^2`` profiles.
    jacobian : float
        Coefficient of the advection ``J(psi, q)`` (1 in the truth).
    sponge : float
        Peak rate of the edge sponge (0: none; 1 as the paper).
    dealias : bool
        Keep the state on the modes of the 2/3 rule (default; off only for tests of the aliasing itself).
    dtype, device :
        Real precision (float64 default) and device of the coefficients; states follow them.

    Examples
    --------
    >>> import torch
    >>> truth, model = QuasiGeostrophic.case("tau_d", shape=(48, 24), lengths=(34.0, 23.0), nu=1e-3)
    >>> psi = truth.initial_state(batch=2, generator=torch.Generator().manual_seed(0))
    >>> psi.shape
    torch.Size([2, 2, 48, 24])
    >>> model.forecast(psi, 0.025).shape
    torch.Size([2, 2, 48, 24])
    """

    grid_dims = 3  # (layer, y, x): the trailing axes of a state

    def __init__(self, shape=PAPER["shape"], lengths=PAPER["lengths"], *, beta: float = PAPER["beta"],
                 tau_d: float = PAPER["tau_d"], tau_r: float | None = None, tau_f: float = PAPER["tau_f"],
                 nu: float = PAPER["nu"], jet: float = PAPER["jet"], sigma: float = PAPER["sigma"],
                 jacobian: float = 1.0, sponge: float = PAPER["sponge"], dealias: bool = True,
                 dtype=torch.float64, device=None):
        shape = validate.shape(shape)
        if len(shape) != 2 or any(n < 4 or n % 2 for n in shape):
            raise ValueError(f"shape is (n_y, n_x) with even sizes >= 4, got {shape}")
        lengths = validate.per_axis(lengths, 2, "lengths")
        if any(not L > 0 for L in lengths):
            raise ValueError(f"lengths must be positive, got {lengths}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.shape, self.lengths = shape, lengths
        self.beta = validate.real_number(beta, "beta")
        self.tau_d = _rate(tau_d, "tau_d")
        self.tau_r = self.tau_d if tau_r is None else _rate(tau_r, "tau_r")
        self.tau_f = _rate(tau_f, "tau_f")
        self.nu = _rate(nu, "nu")
        self.jet = validate.real_number(jet, "jet")
        self.sigma = validate.real_number(sigma, "sigma")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.jacobian = validate.real_number(jacobian, "jacobian")
        self.sponge = _rate(sponge, "sponge")
        self.dealias = validate.boolean(dealias, "dealias")
        self.dtype, self.device = dtype, backend.resolve_device(device)

        ny, nx = shape
        ly, kx = wavenumber_grid(shape, lengths, real=True, dtype=torch.float64, device=self.device)
        self.ky, self.kx = ly, kx                                      # (ny, 1), (1, nx//2+1)
        self.k2 = kx**2 + ly**2
        self.mask = (dealias_mask(shape, device=self.device) if self.dealias
                     else torch.ones(ny, nx // 2 + 1, dtype=torch.bool, device=self.device))
        #: the stiff linear symbol (hyperviscosity), shared by both layers
        self.linear = (-self.nu * (kx**8 + ly**8)).to(dtype)
        y = self.y.to(torch.float64)
        edge = lengths[0] / 2 - y.abs()                                # distance to the y = +-L_y/2 edge
        sech2 = lambda z: 1 / torch.cosh(z) ** 2  # noqa: E731
        self.u_jet = self.jet * (sech2(y / self.sigma) - sech2(edge / self.sigma))
        uh = torch.fft.fft(self.u_jet)
        l1 = ly[:, 0].to(torch.complex128)
        psi_r_hat = torch.where(l1 == 0, torch.zeros_like(uh), -uh / (1j * torch.where(l1 == 0, 1, l1)))
        self.psi_r = torch.fft.ifft(psi_r_hat).real[:, None]           # (ny, 1): psi_R(y), u_R = -d psi_R/dy
        self.sponge_profile = (self.sponge * sech2(edge / self.sigma))[:, None]
        self._psi_r_hat = torch.fft.rfft2(self.psi_r.expand(ny, nx)) * self.mask

    # ----------------------------------------------------------------------------- construction helpers
    @classmethod
    def case(cls, name: str, **settings) -> tuple["QuasiGeostrophic", "QuasiGeostrophic"]:
        """``(truth, model)`` for the paper's case ``name`` (see :data:`CASES`); ``settings`` apply to both."""
        name = validate.choice(name, "case", tuple(CASES))
        return cls(**settings), cls(**{**settings, **CASES[name]})

    @property
    def config(self) -> dict:
        """The constructor arguments (JSON-able): provenance for data sets and results."""
        return {"shape": list(self.shape), "lengths": list(self.lengths), "beta": self.beta, "tau_d": self.tau_d,
                "tau_r": self.tau_r, "tau_f": self.tau_f, "nu": self.nu, "jet": self.jet, "sigma": self.sigma,
                "jacobian": self.jacobian, "sponge": self.sponge, "dealias": self.dealias}

    @property
    def x(self) -> torch.Tensor:
        """Grid points in ``x`` (``n_x``)."""
        n, L = self.shape[1], self.lengths[1]
        return -L / 2 + L / n * torch.arange(n, dtype=self.dtype, device=self.device)

    @property
    def y(self) -> torch.Tensor:
        """Grid points in ``y`` (``n_y``)."""
        n, L = self.shape[0], self.lengths[0]
        return -L / 2 + L / n * torch.arange(n, dtype=self.dtype, device=self.device)

    @property
    def terms(self) -> dict[str, float]:
        """The right-hand side's coefficients on the library's terms (:func:`library_names`); sponge and
        hyperviscosity, the same in every case, are left out."""
        out = {}
        for layer, sign in ((1, 1.0), (2, -1.0)):
            out[f"q{layer}:J(psi_{layer},q_{layer})"] = -self.jacobian
            out[f"q{layer}:dx(psi_{layer})"] = -self.beta
            out[f"q{layer}:psi_1"] = sign * self.tau_d
            out[f"q{layer}:psi_2"] = -sign * self.tau_d
            out[f"q{layer}:psi_R"] = -sign * self.tau_r
        out["q2:lap(psi_2)"] = -self.tau_f
        return {k: v for k, v in out.items() if v != 0}

    # ----------------------------------------------------------------------------- transforms
    def _check_state(self, u: torch.Tensor, name: str, spectral: bool = False) -> torch.Tensor:
        if not isinstance(u, torch.Tensor):
            u = backend.as_tensor(u, name=name)
        want = (2, self.shape[0], self.shape[1] // 2 + 1) if spectral else (2, *self.shape)
        if u.dim() < 3 or tuple(u.shape[-3:]) != want:
            raise ValueError(f"{name} must have shape (*batch, {', '.join(map(str, want))}), got {tuple(u.shape)}")
        return u

    def rfft(self, u: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(u)

    def irfft(self, v: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(v, s=self.shape)

    def _c(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        real = like.real.dtype if like.is_complex() else like.dtype
        return t.to(device=like.device, dtype=real)

    def q_from_psi(self, psi_hat: torch.Tensor) -> torch.Tensor:
        """Spectral PV anomaly from the spectral streamfunction (both ``(..., 2, n_y, n_x//2+1)``)."""
        k2 = self._c(self.k2, psi_hat)
        p1, p2 = psi_hat[..., 0, :, :], psi_hat[..., 1, :, :]
        return torch.stack((-k2 * p1 + (p2 - p1), -k2 * p2 + (p1 - p2)), dim=-3)

    def psi_from_q(self, q_hat: torch.Tensor) -> torch.Tensor:
        """Invert the PV: barotropic ``-(q_1 + q_2) / 2K^2`` (mean 0) and baroclinic ``-(q_1 - q_2) / 2(K^2 + 2)``."""
        k2 = self._c(self.k2, q_hat)
        q1, q2 = q_hat[..., 0, :, :], q_hat[..., 1, :, :]
        bt = -(q1 + q2) / (2 * torch.where(k2 == 0, 1, k2))
        bt = torch.where(k2 == 0, 0, bt)
        bc = -(q1 - q2) / (2 * (k2 + 2))
        return torch.stack((bt + bc, bt - bc), dim=-3)

    def linear_symbol(self, shape=None, dtype=torch.float64, device=None) -> torch.Tensor:
        """The stiff linear symbol (:attr:`linear`, the hyperviscosity of both layers), the stepping interface every
        model shares (:func:`krylon.solvers.timestepping.simulate`); ``shape`` must be ``(2, n_y, n_x)`` when given."""
        if shape is not None and tuple(shape) != (2, *self.shape):
            raise ValueError(f"this model's states are (2, {self.shape[0]}, {self.shape[1]}), got {tuple(shape)}")
        return self.linear.to(device=device, dtype=dtype)

    def spectral(self, psi: torch.Tensor) -> torch.Tensor:
        """The model's spectral state (PV anomaly, dealiased) from grid streamfunctions ``(*batch, 2, n_y, n_x)``."""
        psi = self._check_state(psi, "psi")
        return self.q_from_psi(self.rfft(psi)) * self.mask

    def physical(self, q_hat: torch.Tensor) -> torch.Tensor:
        """Grid streamfunctions from a spectral state."""
        return self.irfft(self.psi_from_q(self._check_state(q_hat, "q_hat", spectral=True)))

    # ----------------------------------------------------------------------------- right-hand side
    def _jacobian(self, psi_hat: torch.Tensor, q_hat: torch.Tensor) -> torch.Tensor:
        kx, ky = self._c(self.kx, psi_hat), self._c(self.ky, psi_hat)
        grads = self.irfft(torch.stack((1j * kx * psi_hat, 1j * ky * psi_hat, 1j * kx * q_hat, 1j * ky * q_hat)))
        return self.rfft(grads[0] * grads[3] - grads[1] * grads[2]) * self.mask

    def nonlinear(self, q_hat: torch.Tensor) -> torch.Tensor:
        """Everything but the hyperviscosity: advection, beta, relaxation, friction and sponge (spectral)."""
        psi_hat = self.psi_from_q(q_hat)
        rhs = -self.beta * 1j * self._c(self.kx, q_hat) * psi_hat
        if self.jacobian:
            rhs = rhs - self.jacobian * self._jacobian(psi_hat, q_hat)
        relax = self.tau_d * (psi_hat[..., 0, :, :] - psi_hat[..., 1, :, :]) - self.tau_r * self._psi_r_hat.to(q_hat.dtype)
        rhs = rhs + torch.stack((relax, -relax), dim=-3)
        if self.tau_f:
            fric = torch.zeros_like(rhs)
            fric[..., 1, :, :] = self.tau_f * self._c(self.k2, q_hat) * psi_hat[..., 1, :, :]
            rhs = rhs + fric
        if self.sponge:
            eddy = q_hat.clone()
            eddy[..., 0] = 0  # q minus its zonal mean: drop the k_x = 0 column
            rhs = rhs - self.rfft(self._c(self.sponge_profile, q_hat) * self.irfft(eddy))
        return rhs * self.mask

    def tendency(self, q_hat: torch.Tensor) -> torch.Tensor:
        """The full right-hand side ``dq/dt`` (spectral)."""
        return self.nonlinear(q_hat) + self.linear.to(q_hat.device) * q_hat

    # ----------------------------------------------------------------------------- time stepping
    def forecast(self, psi: torch.Tensor, dt: float) -> torch.Tensor:
        """One step of the model from grid states (what MEDIDA's one-step model error uses).

        A leapfrog run (:class:`krylon.solvers.timestepping.Leapfrog`, the paper's integrator) started from a
        single state takes a forward-Euler step with the hyperviscosity backward,
        ``q_1 = (q_0 + dt N(q_0)) / (1 - dt L)``; this is that step.
        """
        dt = validate.real_number(dt, "dt", minimum=0.0)
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt}")
        v = self.spectral(psi.to(self.dtype))
        return self.physical((v + dt * self.nonlinear(v)) / (1 - dt * self.linear.to(v.device)))

    # ----------------------------------------------------------------------------- states and invariants
    def initial_state(self, batch=(), *, amplitude: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
        """The radiative equilibrium (``psi_1 - psi_2 = psi_R``, no barotropic flow) plus random eddies.

        The eddies are white noise on the modes ``|k| < 1.5`` (a few deformation radii and longer), of rms
        ``amplitude``, so the jet's baroclinic instability starts at once; spin up before using the states.
        """
        batch = (int(batch),) if isinstance(batch, int) else tuple(int(b) for b in batch)
        amplitude = _rate(amplitude, "amplitude")
        ny, nx = self.shape
        noise = torch.randn(*batch, 2, ny, nx, generator=generator, dtype=torch.float64)
        nh = torch.fft.rfft2(noise.to(self.device)) * ((self.k2 < 1.5**2) & (self.k2 > 0) & self.mask)
        eddies = torch.fft.irfft2(nh, s=self.shape)
        eddies = eddies * (amplitude / eddies.std().clamp_min(1e-30))
        base = torch.cat((self.psi_r / 2, -self.psi_r / 2), dim=-1).T[:, :, None].expand(2, ny, nx)
        return (base + eddies).to(self.dtype)

    def energy(self, q_hat: torch.Tensor) -> torch.Tensor:
        """Domain-mean total energy ``(|grad psi_1|^2 + |grad psi_2|^2 + (psi_1 - psi_2)^2) / 2`` per state."""
        psi_hat = self.psi_from_q(q_hat)
        return self._mean_square(psi_hat, self.k2).sum(-1) / 2 + self._mean_square(
            psi_hat[..., :1, :, :] - psi_hat[..., 1:, :, :], None).sum(-1) / 2

    def enstrophy(self, q_hat: torch.Tensor) -> torch.Tensor:
        """Domain-mean potential enstrophy ``(q_1^2 + q_2^2) / 2`` of the anomaly per state."""
        return self._mean_square(q_hat, None).sum(-1) / 2

    def _mean_square(self, v_hat: torch.Tensor, weight) -> torch.Tensor:
        """Per layer, the domain mean of ``|f|^2`` (``weight`` = ``K^2``: of ``|grad f|^2``) by Parseval."""
        ny, nx = self.shape
        w = torch.full((nx // 2 + 1,), 2.0, dtype=torch.float64, device=v_hat.device)
        w[0] = 1
        w[-1] = 1  # rfft: the k_x = 0 and Nyquist columns appear once
        p = v_hat.abs() ** 2 * self._c(w, v_hat)
        if weight is not None:
            p = p * self._c(weight, v_hat)
        return p.sum((-2, -1)) / (ny * nx) ** 2

    def lowpass(self, fields: torch.Tensor, cutoff: float) -> torch.Tensor:
        """Fields ``(*batch, n_y, n_x)`` keeping only the modes of wavenumber ``|K| <= cutoff`` (sharp spectral cut).

        MEDIDA from sparse sensors regresses on the large scales only, where the interpolation is accurate: the
        same linear filter on the model error and on every library column leaves the coefficients unchanged.
        """
        cutoff = validate.real_number(cutoff, "cutoff", minimum=0.0)
        if tuple(fields.shape[-2:]) != self.shape:
            raise ValueError(f"fields must have the grid {self.shape} in their last axes, got {tuple(fields.shape)}")
        keep = self._c(self.k2, fields) <= cutoff**2
        return self.irfft(self.rfft(fields) * keep)

    # ----------------------------------------------------------------------------- the library's terms
    def library(self, psi: torch.Tensor, *, space: str = "psi") -> torch.Tensor:
        """The QG library's columns at grid states ``psi``: shape ``(*batch, 2, n_y, n_x, 22)``.

        Column ``q<e>:<term>`` is ``<term>`` (of :data:`LIBRARY_TERMS`, evaluated spectrally) placed in the
        ``q_e`` equation (zero in the other layer).  ``space="q"`` returns them as PV tendencies; ``"psi"`` (the
        default, what a model error of streamfunction states regresses on) maps each through the PV inversion.
        """
        space = validate.choice(space, "space", ("psi", "q"))
        psi = self._check_state(psi, "psi").to(self.dtype)
        psi_hat = self.rfft(psi) * self.mask
        q_hat = self.q_from_psi(psi_hat)
        kx, ky, k2 = (self._c(t, psi_hat) for t in (self.kx, self.ky, self.k2))
        p1, p2 = psi_hat[..., 0, :, :], psi_hat[..., 1, :, :]
        base = [-k2 * p1, -k2 * p2, p1, p2, self._psi_r_hat.to(psi_hat.dtype).expand_as(p1), 1j * kx * p1, 1j * kx * p2,
                1j * ky * p1, 1j * ky * p2, self._jacobian(p1, q_hat[..., 0, :, :]), self._jacobian(p2, q_hat[..., 1, :, :])]
        base = torch.stack(base, dim=-3)                               # (*batch, 11, ny, nxr)
        zero = torch.zeros_like(base)
        cols = torch.cat((torch.stack((base, zero), dim=-3), torch.stack((zero, base), dim=-3)), dim=-4)
        if space == "psi":
            cols = self.psi_from_q(cols * self.mask)
        return self.irfft(cols).movedim(-4, -1)                        # (*batch, 2, ny, nx, 22)

