"""Diffusion priors for imaging inverse problems: the VP schedule, the training loss, DDS and DPS.

DDS (Chung, Lee, Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems", ICLR 2024)
alternates, per step, one network call with a few conjugate-gradient iterations of data consistency on the
clean-image estimate, then re-noises it with DDIM.  DPS (Chung et al., ICLR 2023) is the baseline: a gradient
of the data misfit through the network at every step.

Scale convention
----------------
The shipped prior is trained on images whose largest magnitude is about 1 (per-image max-normalised phantoms
times a random gain in [0.8, 1]).  A sampler divides the measurements by a per-image scale ``s`` -- the largest
magnitude of a least-squares estimate (at most 20 CG iterations on ``A^H A x = A^H y`` from zero, relative
tolerance 1e-3; early stopping regularises it), or the ``scale=`` the caller passes -- samples ``z`` with
``A z = y / s`` and returns ``x = s z``.  The operator stays linear, so no offset is used.  An image whose
measurements are all zero has no scale to estimate: pass ``scale=`` for it or a ValueError is raised.

Seeding and batches
-------------------
The sampler's noise comes from one CPU generator per image, seeded from ``seed`` (or drawn from the caller's
``generator``, CPU or CUDA) and the image's position in the batch, so an image's reconstruction does not depend
on the other images it is batched with, nor on the batch size (up to floating-point rounding of batched
kernels); the same image at another position draws another stream.  ``seed=[s0, s1, ...]``, one seed per image,
ties each image's stream to its own seed instead (image ``i`` with seed ``s_i`` is reconstructed as it would be
alone with ``seed=s_i``): the benchmark seeds each test image by its name, so adding a test image changes no
other image's result.

Low NFE
-------
The Tweedie estimate ``x0`` is not clipped to the training range: clipping it to [-1, 1] before the
data-consistency step changes results at 20 NFE as well (slightly) and did not help at 5 NFE (PSNR within
+-0.02 dB either way on the benchmark's MRI x4 task), so at very low NFE ``x0`` can overshoot.

Shipped priors: magnitude and complex
-------------------------------------
``DDS.pretrained()`` (``kind="magnitude"``) is a real prior: images are real, one network channel.
``DDS.pretrained(kind="complex")`` is trained on complex phantoms with a smooth random phase (two channels,
real and imaginary); with it DDS works over complex images throughout (no real constraint), which is what MRI
of a real object with a phase needs.  ``sampler.image_size`` and ``sampler.complex_images`` say which is
loaded.  A complex prior needs a complex operator (a real one such as CT is refused: use the magnitude prior),
and complex data for it.

Real priors with complex operators
----------------------------------
A real (magnitude) prior used with a complex operator (MRI) solves the data-consistency step over real
images: the normal operator ``Re(A^H A x)`` and right-hand side ``Re(A^H y)``, which is the exact
least-squares problem restricted to real ``x`` (symmetric positive semi-definite, so CG applies).  A complex
``x_init`` is taken by its magnitude (``abs()``) for a real prior.  Compare it with classical baselines under the
same constraint (``real=True`` in :mod:`krylon.solvers.reconstruction`).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import torch

from ..kernels import distributed, validate
from ..operators import LinearOperator
from ..operators.learned import registry
from ..operators.learned.unet import ScoreUNet, from_channels, to_channels
from .cg import CG
from .reconstruction import _back, _Normal

__all__ = ["VPSchedule", "diffusion_loss", "SampleResult", "DDS", "DPS", "PRETRAINED", "DDS_SETTINGS",
           "COMPLEX_SETTINGS", "SETTING_NAMES", "dds_settings"]

# the shipped priors by kind (operators/learned/weights/diffusion_<name>.md records how each was trained)
PRETRAINED = {"magnitude": "phantom64", "complex": "phantom64_complex"}


# DDS's settings per (modality, noisy), chosen by krylon.bench.dds.tune() on held-out phantoms (BENCHMARKS.md): eta,
# the CG steps per sampling step (a (first, last) ramp of power cg_power, more steps as the noise falls), the carried
# data correction, the timestep spacing power and, for noisy data, gamma: the data weight of the consistency step
# (I + gamma_t A^H A) x = x0 + gamma_t A^H y with gamma_t = gamma (1 - abar_t) / abar_t ("snr"; CT's A^H A is
# ~300x MRI's).  Noiseless data: A^H A x = A^H y.  Noisy data: fewer CG steps, and the weight falls with the noise
# level so that the last steps do not fit the measurement noise.  CT's noiseless ramp is the best whose CG costs at
# most about one network call per step on the CPU (tune's cg_budget): DDS-50 stays >= 10x faster than DPS-500.
# denoise_below: the deterministic tail (steps into lower timesteps add no noise), the shortest within 0.1 dB per task
# of the best: the last step for noiseless MRI, longer for CT and for noisy data.  Noiseless MRI's eta and tail were
# chosen again for the stage-7 prior (stop 25) on held-out phantoms and natural photographs together: eta 1 and a
# 3-step tail gained +3.4..+3.9 dB on x8 Gaussian-1D (both sets) over eta 0.5 and the last step, for -1.8 dB on x4
# phantoms (+0.3 on x4 photographs; bench-results/dds-heldout-noiseless-tail-stage7-cpu-2026-12-03-stop25.json).
# final_weight (noisy data): the last step's data weight relative to the schedule's (its solution is returned without
# another denoising).  Noisy
# CT's gamma (15) was chosen on held-out phantoms and held-out natural images together: on the natural ones 30 lost
# 3.5 dB summed over the three CT tasks, on the phantoms 15 gives up 0.5 (MRI's 3e4 wins on both sets summed).
# lam (noisy data whose noise std is given to solve): the weight 1 / (lam sigma^2) per image, the largest PSNR summed
# over the modality's three tasks on both held-out sets (phantoms and natural photographs); it beat the fixed gamma
# on every task of both (natural +0.6..+1.8 dB, phantoms +0.2..+0.7;
# bench-results/dds-heldout-noise-weight-lam-stage6-cpu-2026-12-03-stop25.json).  The noisy tails (100 for both) and
# CT's noisy spacing (2) are tune()'s picks on both held-out sets (stop 26,
# bench-results/dds-tune-noisy-{mri,ct}-heldout-both-cpu-2026-12-03-stop26.json): summed over each modality's six
# cases MRI +1.1 dB over the former 10-step tail (a 40-step one is 0.44 dB down on the x8 Gaussian-1D photographs), CT
# +1.05 over spacing 3 and a 40-step tail (no case down).  dihedral (the network sees the image turned or mirrored,
# another symmetry each step): up on 23 of 24 held-out cases, both priors (stop 27, BENCHMARKS.md).
DDS_SETTINGS = {("mri", False): {"eta": 1.0, "cg_steps": (2, 50), "cg_power": 2.0, "carry_correction": True,
                                 "gamma": None, "gamma_schedule": "snr", "spacing": 4.0, "denoise_below": 3,
                                 "final_weight": 1.0, "lam": None, "dihedral": True},
                ("ct", False): {"eta": 1.0, "cg_steps": (1, 40), "cg_power": 4.0, "carry_correction": True,
                                "gamma": None, "gamma_schedule": "snr", "spacing": 4.0, "denoise_below": 20,
                                "final_weight": 1.0, "lam": None, "dihedral": True},
                ("mri", True): {"eta": 1.0, "cg_steps": (2, 20), "cg_power": 2.0, "carry_correction": True,
                                "gamma": 3e4, "gamma_schedule": "snr", "spacing": 3.0, "denoise_below": 100,
                                "final_weight": 0.3, "lam": 0.2, "dihedral": True},
                ("ct", True): {"eta": 1.0, "cg_steps": (2, 20), "cg_power": 2.0, "carry_correction": True,
                               "gamma": 15.0, "gamma_schedule": "snr", "spacing": 2.0, "denoise_below": 100,
                               "final_weight": 0.0, "lam": 0.3, "dihedral": True}}
# the complex prior's (MRI only), chosen by tune(kind="complex") on complex held-out phantoms; noisy: tail and lam
# from tune(kind="complex", parts=("noisy",)) at stop 26 (bench-results/dds-tune-noisy-complex-cpu-2026-12-03-stop26.json;
# the 12 cells span 0.9 dB summed over the three tasks, the pick +0.2 over the magnitude prior's 100 and 0.2)
COMPLEX_SETTINGS = {("mri", False): {**DDS_SETTINGS["mri", False], "eta": 0.85, "denoise_below": 4},
                    ("mri", True): {**DDS_SETTINGS["mri", True], "denoise_below": 10, "lam": 0.15}}
SETTING_NAMES = ("eta", "cg_steps", "cg_power", "carry_correction", "gamma", "gamma_schedule", "spacing",
                 "denoise_below", "final_weight", "lam", "dihedral")


def dds_settings(modality: str, noisy: bool, *, kind: str = "magnitude", **override) -> dict:
    """DDS's settings (:data:`SETTING_NAMES`) for ``modality`` ("mri" or "ct") and noisy or noiseless data, from
    :data:`DDS_SETTINGS` (``kind="complex"``: the complex prior's, MRI only, :data:`COMPLEX_SETTINGS`);
    ``override``: values to use instead (``None`` keeps the tuned one).

    >>> dds_settings("ct", True, eta=0.9)["eta"]
    0.9

    ``DDS.tuned(modality, noisy)`` is the shipped prior with these settings.
    """
    if kind not in ("magnitude", "complex"):
        raise ValueError(f"kind must be 'magnitude' or 'complex', got {kind!r}")
    table = COMPLEX_SETTINGS if kind == "complex" else DDS_SETTINGS
    if (modality, bool(noisy)) not in table:
        raise ValueError(f"modality must be {' or '.join(repr(m) for m in dict.fromkeys(m for m, _ in table))} for "
                         f"the {kind} prior, got {modality!r}")
    unknown = set(override) - set(SETTING_NAMES)
    if unknown:
        raise TypeError(f"dds_settings got unknown settings {sorted(unknown)}")
    return {**table[modality, bool(noisy)], **{k: v for k, v in override.items() if v is not None}}


class VPSchedule:
    """The variance-preserving (DDPM) schedule: linear ``beta`` from ``beta_start`` to ``beta_end`` over ``steps``.

    ``alpha_bar[t] = prod_{s <= t} (1 - beta[s])``; ``x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps``.

    Examples
    --------
    >>> s = VPSchedule()
    >>> s.steps, round(float(s.alpha_bar[0]), 6)
    (1000, 0.9999)
    >>> s.timesteps(4).tolist()
    [999, 666, 333, 0]
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = 1000):
        steps = validate.integer(steps, "steps")
        if steps < 2 or not (0 < beta_start <= beta_end < 1):
            raise ValueError(f"VPSchedule needs steps >= 2 and 0 < beta_start <= beta_end < 1, got steps={steps}, "
                             f"beta_start={beta_start}, beta_end={beta_end}")
        self.beta_start, self.beta_end, self.steps = float(beta_start), float(beta_end), steps
        self.betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1 - self.betas, 0)

    @property
    def config(self) -> dict:
        return {"beta_start": self.beta_start, "beta_end": self.beta_end, "steps": self.steps}

    def timesteps(self, nfe: int, power: float = 1.0) -> torch.Tensor:
        """``nfe`` distinct timesteps from ``steps - 1`` down to 0 (one network call each):
        ``t_i = round((steps - 1) (1 - i / (nfe - 1)) ** power)``, made strictly decreasing.  ``power`` 1 spaces
        them evenly, 2 is DDIM's "quadratic" spacing; larger powers put more of them at low noise, where the
        last steps decide the fine detail of the estimate.

        >>> VPSchedule().timesteps(5, power=2).tolist()
        [999, 562, 250, 62, 0]
        """
        nfe = validate.integer(nfe, "nfe")
        if not 1 <= nfe <= self.steps:
            raise ValueError(f"nfe must be between 1 and {self.steps} (the schedule's steps), got {nfe}")
        power = validate.real_number(power, "power")
        if not (power > 0 and math.isfinite(power)):
            raise ValueError(f"the timestep spacing power must be positive, got {power}")
        if nfe == 1:
            return torch.tensor([self.steps - 1])
        u = torch.linspace(1, 0, nfe, dtype=torch.float64) ** power
        t = (u * (self.steps - 1)).round().long()
        for i in range(nfe - 2, -1, -1):  # rounding merges steps near 0: push earlier ones up, one apart
            t[i] = max(int(t[i]), int(t[i + 1]) + 1)
        return t

    def ab(self, t, like: torch.Tensor) -> torch.Tensor:
        """``alpha_bar[t]`` as a real tensor broadcastable against ``like`` (``t``: int or ``(B,)``), or 1 for t < 0."""
        t = torch.as_tensor(t)
        # index on t's device: diffusion_loss draws t on the images' device (CUDA in GPU training)
        a = torch.where(t >= 0, self.alpha_bar.to(t.device)[t.clamp(min=0)], 1.0)
        a = a.to(device=like.device, dtype=like.real.dtype if like.is_complex() else like.dtype)
        return a.reshape(a.shape + (1,) * (like.dim() - a.dim()))

    def add_noise(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        a = self.ab(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def __repr__(self):
        return f"VPSchedule(beta_start={self.beta_start}, beta_end={self.beta_end}, steps={self.steps})"


def diffusion_loss(model: ScoreUNet, batch: dict, schedule: VPSchedule, *, key: str = "image",
                   gain=(0.8, 1.0), augment: bool = True) -> torch.Tensor:
    """The DDPM noise-prediction loss ``E ||eps - eps_theta(x_t, t)||^2`` on ``batch[key]`` (``(B, H, W)`` images).

    Each image is normalised to largest magnitude 1 and multiplied by a random gain in ``gain`` (the samplers'
    scale convention, with slack for its estimate); ``augment`` adds random flips and quarter turns.  Real
    images for a real network, complex for a complex one (a real image is taken as complex with zero phase).
    """
    x = batch[key]
    if x.dim() == 4 and x.shape[1] in (1, 2) and not x.is_complex():  # (B, 1, H, W) real, (B, 2, H, W) real/imag
        x = x[:, 0] if x.shape[1] == 1 else torch.complex(x[:, 0], x[:, 1])
    if x.dim() != 3:
        raise ValueError(f"diffusion_loss expects images (B, H, W) or channels (B, 1|2, H, W) under {key!r}, "
                         f"got {tuple(x.shape)}")
    if x.is_complex() and not model.complex_images:
        x = x.abs()
    x = to_channels(x, model.complex_images)
    b = x.shape[0]
    peak = x.flatten(1).abs().amax(1) if not model.complex_images else x.pow(2).sum(1).sqrt().flatten(1).amax(1)
    g = torch.empty(b, device=x.device).uniform_(*gain)
    x = x * (g / peak.clamp(min=1e-8))[:, None, None, None]
    if augment:
        k = int(torch.randint(4, ()))
        x = torch.rot90(x, k, (2, 3))
        if torch.rand(()) < 0.5:
            x = x.flip(3)
    t = torch.randint(0, schedule.steps, (b,), device=x.device)
    noise = torch.randn_like(x)
    xt = schedule.add_noise(x, t, noise)
    return (model(xt, t) - noise).pow(2).mean()


def train_prior(dataset, out_dir, config, *, key: str | None = None, complex_images: bool = False,
                channels: int = 16, mults=(1, 2, 2, 4), blocks: int = 1, attention: bool = True,
                ema_decay: float = 0.995, schedule: VPSchedule | None = None, init: ScoreUNet | None = None,
                device="cpu", progress: bool = True, log=print) -> ScoreUNet:
    """Train a :class:`ScoreUNet` prior on ``dataset`` (items ``{key: image}``) through the training loop.

    Images are ``(H, W)`` (real or complex) or channels ``(1, H, W)`` (magnitude) / ``(2, H, W)`` (real, imaginary),
    as :func:`krylon.datasets.phantoms.generate_phantoms` writes them under ``"x"``.

    Resumes from ``out_dir/checkpoint.pt``; writes the EMA weights as a registry checkpoint ``out_dir/prior.pt``
    (load it with :meth:`DDS.load`) and returns that network.  ``config``: a
    :class:`~krylon.solvers.training.TrainConfig`.  ``init``: a prior to fine-tune (e.g. ``DDS.pretrained().model``):
    its architecture and weights start the training (the EMA starts at its weights) and ``complex_images``,
    ``channels``, ``mults``, ``blocks``, ``attention`` must be left at their defaults or match it.
    """
    from pathlib import Path

    from .training import EMA, train

    keys = list(getattr(dataset, "keys", []) or [])
    if key is None:
        key = next((k for k in ("image", "x") if k in keys), keys[0] if len(keys) == 1 else "image")
    first = dataset[0][key]
    if first.dim() not in (2, 3) or first.shape[-1] != first.shape[-2] or (first.dim() == 3 and first.shape[0] > 2):
        raise ValueError(f"the prior trains on square images (H, W) or (1|2, H, W) under {key!r}; got shape "
                         f"{tuple(first.shape)}")
    schedule = schedule or VPSchedule()
    torch.manual_seed(config.seed)
    wanted = {"image_size": first.shape[-1], "complex_images": complex_images, "channels": channels,
              "mults": list(mults), "blocks": blocks, "attention": attention}
    if init is None:
        net = ScoreUNet(**wanted).to(device)
    else:
        if not isinstance(init, ScoreUNet):
            raise TypeError(f"init must be a ScoreUNet (a prior to fine-tune), got {type(init).__name__}")
        have = {k: (list(v) if isinstance(v, tuple) else v) for k, v in init.config.items()}
        # the architecture arguments the caller left at their defaults give way to init's
        defaults = {k: p.default for k, p in inspect.signature(train_prior).parameters.items() if k in wanted}
        defaults["mults"] = list(defaults["mults"])
        clash = {k: (wanted[k], have.get(k)) for k in wanted
                 if have.get(k) != wanted[k] and (k == "image_size" or wanted[k] != defaults[k])}
        if clash:
            raise ValueError("the prior to fine-tune does not match the data or the requested network: "
                             + ", ".join(f"{k} wanted {w!r}, init has {h!r}" for k, (w, h) in clash.items()))
        net = ScoreUNet(**init.config).to(device)
        net.load_state_dict(init.state_dict())
    ema = EMA(net, ema_decay)
    train(net, lambda m, b: diffusion_loss(m, b, schedule, key=key), dataset, out_dir, config, progress=progress,
          log=log, name="diffusion-prior", hooks=[ema])
    ema.copy_to(net)
    if distributed.rank() == 0:  # one writer under torchrun: every rank holds the same weights
        registry.save_checkpoint(net.eval(), Path(out_dir) / "prior.pt")
    distributed.barrier()
    return net


# ----------------------------------------------------------------------------- samplers
@dataclass
class SampleResult:
    """What a sampler returns: ``x`` the reconstruction (``(*batch, H, W)``, in the measurements' units), ``nfe``
    network calls, ``seconds`` wall time, ``scale`` the per-image scale used (``(*batch,)``) and, with
    ``trajectory=True``, the clean-image estimate after every step (``(steps, *batch, H, W)``)."""

    x: torch.Tensor
    nfe: int
    seconds: float
    scale: torch.Tensor
    trajectory: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


def _rtol(b: torch.Tensor) -> float:
    """A tolerance at rounding level: stop a CG that has solved its (possibly singular) system, never earlier."""
    return 100 * torch.finfo(b.dtype).eps


def _symmetry(x: torch.Tensor, k: int, *, inverse: bool = False) -> torch.Tensor:
    """The ``k``-th of the 8 symmetries of the square on the last two axes (``k >= 4``: a mirror, then ``k mod 4``
    quarter turns), or its inverse."""
    if k == 0:
        return x
    turns, mirror = k % 4, k >= 4
    if inverse:
        x = torch.rot90(x, -turns, (-2, -1))
        return x.flip(-1) if mirror else x
    return torch.rot90(x.flip(-1) if mirror else x, turns, (-2, -1))


class _Sampler:
    """What DDS and DPS share: the network, the schedule, input checks, the scale convention and the loop."""

    family = "dds"

    def __init__(self, model: ScoreUNet, *, schedule: VPSchedule | None = None, spacing: float = 1.0,
                 denoise_below: int = 0, dihedral: bool = False):
        if not isinstance(model, ScoreUNet):
            raise TypeError(f"{type(self).__name__} needs a ScoreUNet score network, got {type(model).__name__}")
        if schedule is not None and not isinstance(schedule, VPSchedule):
            raise TypeError(f"schedule must be a VPSchedule, got {type(schedule).__name__}")
        self.model = model.eval()
        self.schedule = schedule or VPSchedule()
        self.spacing = validate.real_number(spacing, "spacing")
        self.schedule.timesteps(2, self.spacing)  # checks it
        # steps into timesteps below it add no fresh noise (each sampler says how it steps there)
        self.denoise_below = validate.integer(denoise_below, "denoise_below", minimum=0)
        self.dihedral = validate.boolean(dihedral, "dihedral")

    @property
    def image_size(self) -> int:
        """The resolution (``H = W``) the prior was trained at; the sampler takes images of that size."""
        return self.model.image_size

    @property
    def complex_images(self) -> bool:
        """Whether the prior is over complex images (reconstructions are complex, no real constraint) or real ones."""
        return self.model.complex_images

    @classmethod
    def pretrained(cls, name: str | None = None, *, kind: str | None = None, **options):
        """The sampler with one of krylon's shipped priors, loaded with ``weights_only=True`` and checked against
        its sha256.

        ``kind``: ``"magnitude"`` (default; real images, :data:`PRETRAINED` ``["magnitude"]``) or ``"complex"``
        (complex images with a smooth phase, for MRI without the real constraint); or ``name``, a shipped
        prior's name (``registry.available("diffusion")`` lists them).  Not both.
        """
        if name is not None and kind is not None:
            raise ValueError(f"give a shipped prior's name or its kind, not both (got name={name!r}, kind={kind!r})")
        if name is None:
            name = PRETRAINED[validate.choice("magnitude" if kind is None else kind, "kind", tuple(PRETRAINED))]
        net = registry.load_pretrained("diffusion", name)
        if not isinstance(net, ScoreUNet):
            raise ValueError(f"the shipped diffusion model {name!r} is a {type(net).__name__}, not a ScoreUNet")
        return cls(net, **options)

    @classmethod
    def load(cls, path, **options):
        """The sampler with the prior saved at ``path`` (``prior.pt`` of ``krylon train diffusion``)."""
        return cls(registry.load_checkpoint(path, expect=ScoreUNet), **options)

    # ------------------------------------------------------------------ checks and scale
    def _inputs(self, A, y, x_init):
        if not isinstance(A, LinearOperator):
            raise TypeError(f"A must be a krylon LinearOperator, got {type(A).__name__}")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if len(A.shape_in) != 2:
            raise ValueError(f"the prior reconstructs 2-D images; the operator's domain is {A.shape_in}")
        n = self.image_size
        if tuple(A.shape_in) != (n, n):
            self.model.check_size(A.shape_in)
            raise ValueError(f"the prior was trained on {n}x{n} images; the operator's images are "
                             f"{A.shape_in[0]}x{A.shape_in[1]} (resize the image or train a prior at that size)")
        nd = len(A.shape_out)
        if y.dim() < nd or tuple(y.shape[y.dim() - nd:]) != tuple(A.shape_out):
            raise ValueError(f"y of shape {tuple(y.shape)} does not end in the operator's measurement shape "
                             f"{tuple(A.shape_out)}")
        if not torch.isfinite(torch.view_as_real(y) if y.is_complex() else y).all():
            raise ValueError("y contains NaN or inf")
        if y.is_complex() and A.dtype is not None and not A.dtype.is_complex:
            raise ValueError(f"y is complex ({y.dtype}) but the operator is real ({A.dtype})")
        if not y.is_complex() and A.dtype is not None and A.dtype.is_complex:
            raise ValueError(f"y is real ({y.dtype}) but the operator's measurements are complex ({A.dtype}): "
                             "pass the complex data (k-space), not its magnitude")
        if self.model.complex_images and A.dtype is not None and not A.dtype.is_complex:
            raise ValueError(f"the prior is over complex images but the operator is real ({A.dtype}): use a "
                             "magnitude prior (DDS.pretrained(kind='magnitude')) for real operators such as CT")
        batch = tuple(y.shape[: y.dim() - nd])
        real = not self.model.complex_images
        dtype = torch.promote_types(A.dtype or torch.float32, y.dtype)
        rdtype = dtype.to_real() if dtype.is_complex else dtype
        if not rdtype.is_floating_point:
            raise TypeError(f"y must be a floating or complex tensor, got {y.dtype}")
        if not real and not dtype.is_complex:
            dtype = torch.complex64 if rdtype == torch.float32 else torch.complex128
        wdtype = rdtype if real else dtype  # the images' dtype
        yb = y.reshape((-1,) + tuple(A.shape_out)).to(dtype if y.is_complex() or dtype.is_complex is False else y.dtype)
        if x_init is not None:
            if not isinstance(x_init, torch.Tensor) or tuple(x_init.shape) != batch + (n, n):
                raise ValueError(f"x_init must be a tensor of shape {batch + (n, n)}, got "
                                 f"{tuple(x_init.shape) if isinstance(x_init, torch.Tensor) else type(x_init).__name__}")
            x_init = x_init.reshape(-1, n, n)
            x_init = (x_init.abs() if real and x_init.is_complex() else x_init).to(wdtype)
        return yb, batch, real, wdtype, x_init

    def _rhs(self, A, y, real):
        return _back(A, y, real)

    def _scale(self, A, y, real, wdtype, scale, batch):
        """Per-image scale: given, or the largest magnitude of a least-squares estimate (see module notes)."""
        if scale is not None:
            s = torch.as_tensor(scale, dtype=wdtype.to_real() if wdtype.is_complex else wdtype, device=y.device)
            s = s.expand(batch).reshape(-1) if s.dim() == 0 or tuple(s.shape) == batch else None
            if s is None or not (torch.isfinite(s).all() and (s > 0).all()):
                raise ValueError(f"scale must be a positive number or a tensor of shape {batch}, got {scale!r}")
            return s
        zero = (y == 0).flatten(1).all(1)
        if zero.any():
            raise ValueError(f"y is all zero for image(s) {zero.nonzero().flatten().tolist()} of the batch: there is "
                             "nothing to reconstruct and no scale to estimate (pass scale= to sample anyway)")
        b = self._rhs(A, y, real)
        ls = CG(maxiter=20, rtol=1e-3, differentiable=False).solve(_Normal(A, 1.0, 0.0, real), b).x
        s = ls.abs().flatten(1).amax(1)
        return torch.where(s > 0, s, torch.ones_like(s))

    def _check_noise_weighting(self):
        raise ValueError(f"{type(self).__name__} does not weigh the data by the noise: noise_std is for DDS with lam")

    def _noise_std(self, noise_std, batch, s):
        """``noise_std`` in the sampler's units (divided by the scale ``s``), ``(B, 1, 1)``; None if not given."""
        if noise_std is None:
            return None
        self._check_noise_weighting()
        sd = torch.as_tensor(noise_std, dtype=s.dtype, device=s.device)
        if sd.dim() != 0 and tuple(sd.shape) != batch:
            raise ValueError(f"noise_std must be a number or one per image, shape {batch}; got shape {tuple(sd.shape)}")
        if not (torch.isfinite(sd).all() and (sd > 0).all()):
            raise ValueError(f"noise_std must be positive and finite (leave it None for noiseless data), got {noise_std!r}")
        return (sd.expand(batch).reshape(-1) / s).reshape(-1, 1, 1)

    def _eps(self, x, t, i: int):
        """The network's noise estimate at timestep ``t``, step ``i``: with ``dihedral``, of the image under the
        ``i mod 8``-th symmetry of the square, mapped back."""
        real = not self.model.complex_images
        k = i % 8 if self.dihedral else 0
        h = to_channels(_symmetry(x, k), not real)
        tt = torch.full((x.shape[0],), int(t), device=x.device)
        e = from_channels(self.model(h, tt), not real)
        return _symmetry(e, k, inverse=True).to(x.dtype)

    def _noise(self, shape, wdtype, device, gens):
        """``N(0, I)`` images ``shape = (B, H, W)``, image ``i`` from ``gens[i]`` (drawn on the CPU: the same on
        every device)."""
        rd = wdtype.to_real() if wdtype.is_complex else wdtype

        def one(g):
            z = torch.randn(shape[1:], generator=g, dtype=rd)
            if wdtype.is_complex:  # real and imaginary channels each N(0, 1), as in training
                z = torch.complex(z, torch.randn(shape[1:], generator=g, dtype=rd))
            return z

        return torch.stack([one(g) for g in gens]).to(device)

    @staticmethod
    def _streams(generator, b):
        # drawn on the generator's own device: a CUDA generator works as well as a CPU one
        return torch.randint(0, 2 ** 62, (b,), generator=generator, device=generator.device).tolist()

    def _generators(self, seed, generator, b):
        """One CPU generator per image, seeded from ``generator`` (any device) or ``seed`` and the image's index,
        or from the image's own entry of a sequence ``seed`` (the stream image 0 would draw with that seed)."""
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            seeds = self._streams(generator, b)
        elif isinstance(seed, (list, tuple, range)) or getattr(seed, "ndim", 0) == 1:  # also numpy / torch 1-D
            per_image = [validate.integer(v, "seed", minimum=0) for v in list(seed)]
            if len(per_image) != b:
                raise ValueError(f"seed has {len(per_image)} per-image entries but the batch has {b} images")
            seeds = [self._streams(torch.Generator().manual_seed(v), 1)[0] for v in per_image]
        else:
            seeds = self._streams(torch.Generator().manual_seed(validate.integer(seed, "seed", minimum=0)), b)
        return [torch.Generator().manual_seed(int(v)) for v in seeds]

    def solve(self, A: LinearOperator, y: torch.Tensor, *, nfe: int | None = None, seed=0,
              generator: torch.Generator | None = None, x_init: torch.Tensor | None = None,
              trajectory: bool = False, scale=None, noise_std=None, progress: bool = False) -> SampleResult:
        """Reconstruct ``x`` from ``y = A x (+ noise)``; ``y``: ``(*batch, *A.shape_out)``.

        ``nfe``: network calls (DDS default 50, DPS default 1000); ``seed`` or ``generator`` (a
        ``torch.Generator`` on any device) seed the sampler, one noise stream per image (see the module notes);
        ``seed`` may also be one seed per image (a sequence over the flattened batch): an image then draws the
        same stream wherever it stands in any batch;
        ``x_init``: a start image ``(*batch, H, W)`` in the measurements' units (complex with a real prior: its
        magnitude), noised to the first timestep instead of starting from pure noise; ``scale``: the per-image
        scale (default: estimated, see the module notes); ``noise_std``: the standard deviation of the noise in
        ``y`` (its units; a number or one per image, ``(*batch,)``), for samplers that weigh the data by it
        (DDS with ``lam``; :func:`krylon.operators.imaging.noise_std` gives it for simulated noise).
        """
        nfe = self.default_nfe if nfe is None else nfe
        ts = self.schedule.timesteps(nfe, self.spacing)
        yb, batch, real, wdtype, x_init = self._inputs(A, y, x_init)
        b = yb.shape[0]
        gen = self._generators(seed, generator, b)
        t0 = time.perf_counter()
        s = self._scale(A, yb, real, wdtype, scale, batch)
        sigma = self._noise_std(noise_std, batch, s)
        yb = yb / s.reshape((-1,) + (1,) * len(A.shape_out)).to(yb.dtype)
        n = self.image_size
        shape = (b, n, n)
        x = self._noise(shape, wdtype, yb.device, gen)
        if x_init is not None:
            x0 = x_init / s.reshape(-1, 1, 1).to(x_init.dtype)
            x = self.schedule.add_noise(x0, int(ts[0]), x)
        traj = [] if trajectory else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ts), desc=type(self).__name__, leave=False)
        # what a sampler carries from one step to the next (DDS: its data correction) and the noise in its units
        state = {"n": len(ts), "sigma": sigma}
        for i, t in enumerate(ts.tolist()):
            t_next = int(ts[i + 1]) if i + 1 < len(ts) else -1
            state["i"] = i
            x, x0 = self._step(A, yb, x, t, t_next, real, gen, state)
            if traj is not None:
                traj.append((x0 * s.reshape(-1, 1, 1).to(x0.dtype)).detach())
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        out = (x0 * s.reshape(-1, 1, 1).to(x0.dtype)).detach()
        seconds = time.perf_counter() - t0
        return SampleResult(x=out.reshape(batch + (n, n)), nfe=len(ts), seconds=seconds, scale=s.reshape(batch),
                            trajectory=torch.stack(traj).reshape((len(ts),) + batch + (n, n)) if traj else None)

    def _step(self, A, y, x, t, t_next, real, gen, state):  # pragma: no cover - abstract
        raise NotImplementedError


def _ramp(i: int, n: int, steps, power: float) -> int:
    if not isinstance(steps, tuple):
        return steps
    first, last = steps
    return round(first + (last - first) * (i / max(n - 1, 1)) ** power)


class DDS(_Sampler):
    """Decomposed Diffusion Sampler (Chung, Lee, Ye, ICLR 2024): one network call and a few CG steps per step.

    Per timestep ``t`` (``nfe`` of them from 999 to 0, spaced by ``spacing``): the Tweedie estimate
    ``x0 = (x_t - sqrt(1 - a_t) eps(x_t, t)) / sqrt(a_t)``; data consistency by iterations of
    :class:`~krylon.solvers.CG` (``cg_steps``, a count or a ramp over the steps) started at ``x0`` plus the previous
    step's correction (``carry_correction``) on ``(I + gamma A^H A) x = x0 + gamma A^H y`` (noisy data) or
    ``A^H A x = A^H y`` (``gamma=None``, noiseless; ``gamma`` varies with ``t`` by ``gamma_schedule``); DDIM re-noising
    ``x_next = sqrt(a_next) x0 + sqrt(1 - a_next) (eta z + sqrt(1 - eta^2) eps)``, or, into the timesteps below
    ``denoise_below``, ``x_next = sqrt(a_next) x0`` without noise.  The last step returns the data-consistent
    ``x0``.  Batched over images; complex-safe (CG uses conjugated inner products).

    Parameters
    ----------
    model : ScoreUNet
        The prior (``DDS.pretrained()`` for the shipped one).
    schedule : VPSchedule, optional
        Default: linear beta 1e-4..0.02 over 1000 steps (what the prior was trained with).
    eta : float
        Stochasticity of the re-noising in [0, 1] (0: deterministic DDIM).  Default 1, the value of every entry of
        ``DDS_SETTINGS`` (the paper's is 0.85).
    gamma : float or None
        Weight of the data term for noisy data; None (default): noiseless data consistency, the measurements
        are trusted.  It depends on the scale of ``A^H A`` and the noise, so there is no default value:
        ``DDS_SETTINGS`` (``DDS.tuned``) has the values chosen for the 64x64 MRI and CT operators at 3 % noise.
    gamma_schedule : {"snr", "constant"}
        ``"snr"`` (default): the data weight at step ``t`` is ``gamma (1 - a_t) / a_t``, ``gamma`` over the
        signal-to-noise ratio of ``x_t``: strong while ``x0`` is a rough guess, weak near the end where fitting
        the data would fit its noise (the proximal weighting of DiffPIR, Zhu et al. 2023).  ``"constant"``: the
        paper's fixed ``gamma``.  Ignored without noise (``gamma=None``).
    cg_steps : int or (int, int)
        CG iterations per step: a count, or a ``(first, last)`` pair ramped from the first (noisiest) step to the
        last by ``cg_power`` (:meth:`cg_count`).  Default ``(2, 50)`` (the paper's is 5 every step).
    cg_power : float
        Power of the ramp (default 2: most of the iterations in the last, low-noise steps).
    carry_correction : bool
        Start each step's CG at ``x0`` plus the previous step's data correction (the consistent ``x0`` minus the
        network's), not at ``x0`` (default True).  The correction of a noiseless step lies in the range of
        ``A^H``, so the point CG converges to is unchanged (``x0``'s component outside that range is kept; a noisy
        step's system has one solution whatever the start); only the truncated iterate improves, as if one CG run
        went on across the steps.
    spacing : float
        Power of the timestep spacing (:meth:`VPSchedule.timesteps`): 1 even (the paper's), default 4: more
        of the ``nfe`` steps at low noise, where the last steps settle the detail.
    denoise_below : int
        Steps into a timestep below this one carry the data-consistent ``x0`` over without fresh noise (default 3,
        noiseless MRI's in ``DDS_SETTINGS``: the last few steps; 0 samples to the end, as the paper).  The last
        steps then alternate a small denoising by the network and data consistency (plug-and-play), and return an
        estimate near the posterior mean instead of one sample of the posterior, whose squared error is twice the
        mean's: the PSNR rises, most with noisy data.
    lam : float or None
        The data weight from the noise level, used when :meth:`solve` gets ``noise_std``: ``gamma = 1 / (lam
        sigma^2)``, ``sigma`` the noise's standard deviation in the sampler's units (``noise_std / scale``), so
        each image's weight follows its own noise (DiffPIR's ``lambda``, Zhu et al. 2023, with the ``"snr"``
        schedule: ``gamma_t = (1 - a_t) / (a_t lam sigma^2)``).  It replaces ``gamma`` there and, unlike
        ``gamma``, does not depend on the scale of ``A``: ``DDS_SETTINGS`` has the values chosen per modality.
        A fixed ``gamma`` is tuned for one noise level relative to the images; the measured noise is relative to
        the data (``NOISE`` times the RMS of ``y``), which puts bright, full-field photographs at about twice
        the phantoms' noise in image units, and their best fixed ``gamma`` 3x lower (BENCHMARKS.md).
    final_weight : float
        The data weight of the last step, the one whose solution is returned, as a fraction of the schedule's
        (noisy data; default 1).  ``0`` returns the network's last estimate as it is.  With noisy data the
        earlier steps' solutions are denoised again by the next network call, the last one's is not: a smaller
        weight there fits less of the measurement noise (``DDS_SETTINGS``: chosen on held-out phantoms).
    dihedral : bool
        Show the network the image under one of the 8 symmetries of the square (quarter turns, mirrors), another
        each step (step ``i``: the ``i mod 8``-th), and map its noise estimate back (default True; False: the
        paper's sampler).  Most training images come at every orientation (shapes at random angles, photographs
        turned and mirrored; only the Shepp-Logan family stays within 25 degrees of upright), so the ideal noise
        predictor is nearly equivariant; the network's errors then change from step to step instead of adding up
        in one direction (streaks along one axis), a geometric self-ensemble at no extra network call.  It raised
        DDS-50 on 23 of 24 held-out cases (BENCHMARKS.md).

    The defaults are the best of grids on held-out phantoms over the six benchmark tasks with the shipped prior
    (``krylon.bench.dds.tune``; per modality and noise in ``DDS_SETTINGS``): the spacing power 3-4 gained 4 dB
    over even spacing at 50 NFE (noiseless MRI x4, x8 Gaussian-2D, CT 30 views), and the CG ramp with the
    carried correction matched 50 CG steps every step at about a third of the iterations (better on the
    ill-posed tasks: CT over 120 degrees, MRI x8); the deterministic tail gained 4-7 dB summed over each
    modality's three tasks.  Noisy data have their own settings there (fewer CG steps, the ``"snr"`` weighting, a
    tuned ``gamma``, a longer tail, a lighter last step: ``final_weight``).

    Examples
    --------
    >>> import torch
    >>> from krylon.operators import CallableOperator
    >>> dds = DDS.pretrained()
    >>> n = dds.image_size
    >>> keep = torch.rand(n, n, generator=torch.Generator().manual_seed(0)) < 0.3  # inpainting: 30% of pixels
    >>> A = CallableOperator(lambda x: x * keep, (n, n), adjoint=lambda y: y * keep)
    >>> res = dds.solve(A, A @ torch.ones(n, n), nfe=5, seed=0)
    >>> res.x.shape, res.nfe
    (torch.Size([64, 64]), 5)
    """

    default_nfe = 50

    def __init__(self, model: ScoreUNet, *, schedule: VPSchedule | None = None, eta: float = 1.0,
                 gamma: float | None = None, gamma_schedule: str = "snr", cg_steps=(2, 50), cg_power: float = 2.0,
                 carry_correction: bool = True, spacing: float = 4.0, denoise_below: int = 3,
                 final_weight: float = 1.0, lam: float | None = None, dihedral: bool = True):
        super().__init__(model, schedule=schedule, spacing=spacing, denoise_below=denoise_below, dihedral=dihedral)
        final_weight = validate.real_number(final_weight, "final_weight")
        if not (final_weight >= 0 and math.isfinite(final_weight)):
            raise ValueError(f"final_weight must be a finite number >= 0, got {final_weight}")
        self.final_weight = final_weight
        eta = validate.real_number(eta, "eta")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        for name, v in (("gamma", gamma), ("lam", lam)):
            if v is not None and not (validate.real_number(v, name) > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be positive (or None), got {v}")
        self.lam = None if lam is None else float(lam)
        pair = isinstance(cg_steps, (tuple, list))
        if pair and len(cg_steps) != 2:
            raise ValueError(f"cg_steps is a count or a (first, last) pair of counts, got {cg_steps!r}")
        counts = tuple(validate.integer(c, "cg_steps", minimum=0) for c in (cg_steps if pair else (cg_steps,)))
        cg_power = validate.real_number(cg_power, "cg_power")
        if not (cg_power > 0 and math.isfinite(cg_power)):
            raise ValueError(f"cg_power must be positive, got {cg_power}")
        self.gamma_schedule = validate.choice(gamma_schedule, "gamma_schedule", ("snr", "constant"))
        self.carry_correction = validate.boolean(carry_correction, "carry_correction")
        self.eta, self.gamma, self.cg_power = eta, gamma, cg_power
        self.cg_steps = counts if pair else counts[0]

    @classmethod
    def tuned(cls, modality: str, noisy: bool = False, *, kind: str = "magnitude", **override) -> "DDS":
        """The shipped ``kind`` prior with the settings chosen for ``modality`` ("mri" or "ct") and noisy or
        noiseless data (:func:`dds_settings`; ``override``: values to use instead).

        >>> DDS.tuned("ct", noisy=True).gamma
        15.0
        """
        return cls.pretrained(kind=kind, **dds_settings(modality, noisy, kind=kind, **override))

    def cg_count(self, i: int, n: int) -> int:
        """CG iterations of step ``i`` of ``n`` (0 is the noisiest): ``cg_steps``, or its ``(first, last)`` pair
        ramped as ``first + (last - first) (i / (n - 1))^cg_power``."""
        return _ramp(i, n, self.cg_steps, self.cg_power)

    @staticmethod
    def cg_counts(nfe: int, cg_steps=(2, 50), cg_power: float = 2.0) -> list[int]:
        """The CG iterations of each of ``nfe`` steps with these settings (``cg_count`` of every step)."""
        steps = tuple(cg_steps) if isinstance(cg_steps, (tuple, list)) else cg_steps
        return [_ramp(i, nfe, steps, cg_power) for i in range(nfe)]

    def _check_noise_weighting(self):
        if self.lam is None:
            raise ValueError("noise_std weighs the data through lam, and this DDS has lam=None: pass lam= (or use "
                             "DDS.tuned(modality, noisy=True), whose settings have it)")

    def data_weight(self, t: int | None, *, last: bool = False, sigma=None):
        """The data weight of the noisy consistency step at timestep ``t`` (None: noiseless; ``t=None``: ``gamma``
        as it is); ``last``: of the last step, times ``final_weight``; ``sigma``: the noise's standard deviation
        in the sampler's units (a number or a tensor of them), which makes the weight ``1 / (lam sigma^2)``
        instead of ``gamma``."""
        if sigma is not None:
            self._check_noise_weighting()
            g = 1.0 / (self.lam * sigma ** 2)
        elif self.gamma is None:
            return None
        else:
            g = self.gamma
        if self.gamma_schedule == "snr" and t is not None:
            a = float(self.schedule.alpha_bar[int(t)])
            g = g * (1 - a) / a
        return g * self.final_weight if last else g

    def data_consistency(self, A: LinearOperator, y: torch.Tensor, x0: torch.Tensor, *, real: bool | None = None,
                         t: int | None = None, cg_steps: int | None = None, correction: torch.Tensor | None = None,
                         last: bool = False, sigma=None):
        """CG iterations (``cg_steps``, default the class's count, or the last of its ramp) on the
        data-consistency system (see the class notes) with the data weight of timestep ``t`` (None: ``gamma`` as
        it is; ``last``: the last step's; ``sigma``: from the noise, :meth:`data_weight`), started at
        ``x0 + correction`` (default ``x0``)."""
        if real is None:
            real = not x0.is_complex()
        if cg_steps is None:
            cg_steps = self.cg_steps[-1] if isinstance(self.cg_steps, tuple) else self.cg_steps
        m = validate.integer(cg_steps, "cg_steps", minimum=0)
        start = x0 if correction is None else x0 + correction
        if m == 0:
            return start
        g = self.data_weight(t, last=last, sigma=sigma)
        if last and self.final_weight == 0 and g is not None:  # the network's estimate as it is
            return x0
        b = self._rhs(A, y, real)
        if g is None:
            op = _Normal(A, 1.0, 0.0, real)
        else:
            op, b = _Normal(A, g, 1.0, real), x0 + g * b
        return CG(maxiter=m, rtol=_rtol(b), differentiable=False).solve(op, b, x0=start).x

    @torch.no_grad()
    def _step(self, A, y, x, t, t_next, real, gen, state):
        a = self.schedule.ab(t, x)
        eps = self._eps(x, t, state["i"])
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        xc = self.data_consistency(A, y, x0, real=real, t=t, cg_steps=self.cg_count(state["i"], state["n"]),
                                   correction=state.get("correction"), last=t_next < 0, sigma=state["sigma"])
        if self.carry_correction:
            state["correction"] = xc - x0
        x0 = xc
        if t_next < 0:
            return x0, x0
        an = self.schedule.ab(t_next, x)
        if t_next < self.denoise_below:
            return an.sqrt() * x0, x0
        z = self._noise(x.shape, x.dtype, x.device, gen)
        x = an.sqrt() * x0 + (1 - an).sqrt() * (self.eta * z + math.sqrt(1 - self.eta ** 2) * eps)
        return x, x0


class DPS(_Sampler):
    """Diffusion posterior sampling (Chung et al., ICLR 2023), the baseline of DDS, with the same prior.

    Ancestral (DDPM, ``eta = 1``) steps on ``nfe`` timesteps, DDIM's deterministic ones below ``denoise_below``,
    each followed by a gradient step
    ``x -= zeta grad_{x_t} ||y - A x0(x_t)||`` through the network (so each step costs a forward and a backward
    pass); ``zeta`` is ``step_size``.  This is the paper's normalised step ``zeta' / ||y - A x0|| * grad ||.||^2``
    with ``zeta = 2 zeta'`` (as the authors' code does it).

    Parameters
    ----------
    model : ScoreUNet
    schedule : VPSchedule, optional
    step_size : float
        ``zeta`` (default 1.0, the DPS code's for most tasks).
    spacing : float
        Power of the timestep spacing (:meth:`VPSchedule.timesteps`); default 2 (DDIM's quadratic), which beat
        the paper's even spacing (1) by 0.7-1.9 dB at 500 NFE on held-out phantoms (``krylon.bench.dds.tune``).
    denoise_below : int
        Steps into a timestep below this one are DDIM's deterministic steps (``eta = 0``: the network's noise
        estimate, no fresh noise) instead of ancestral ones (default 160, chosen for MRI on held-out phantoms as
        the step and spacing were; 0: ancestral to the end, as the paper).
        Dropping the noise altogether, as DDS's tail does, fails here: DPS's ``x0`` is not data-consistent and
        its gradient step expects a noisy ``x_t``.
    dihedral : bool
        Turn or mirror the network's input by another symmetry of the square each step, as :class:`DDS` does
        (default False: on held-out images it moved DPS-500 both ways, BENCHMARKS.md).
    """

    default_nfe = 1000

    def __init__(self, model: ScoreUNet, *, schedule: VPSchedule | None = None, step_size: float = 1.0,
                 spacing: float = 2.0, denoise_below: int = 160, dihedral: bool = False):
        super().__init__(model, schedule=schedule, spacing=spacing, denoise_below=denoise_below, dihedral=dihedral)
        step_size = validate.real_number(step_size, "step_size")
        if not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.step_size = step_size

    def _step(self, A, y, x, t, t_next, real, gen, state):
        a = self.schedule.ab(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            eps = self._eps(xg, t, state["i"])
            x0 = (xg - (1 - a).sqrt() * eps) / a.sqrt()
            r = y - A.matvec(x0)
            norm = torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)
            (grad,) = torch.autograd.grad(norm.sum(), xg)
        x0, eps = x0.detach(), eps.detach()
        if t_next < 0:
            return x0, x0
        an = self.schedule.ab(t_next, x)
        if t_next < self.denoise_below:
            x = an.sqrt() * x0 + (1 - an).sqrt() * eps
        else:
            sigma = ((1 - an) / (1 - a) * (1 - a / an)).clamp(min=0).sqrt()
            z = self._noise(x.shape, x.dtype, x.device, gen)
            x = an.sqrt() * x0 + (1 - an - sigma ** 2).clamp(min=0).sqrt() * eps + sigma * z
        return x - self.step_size * grad, x0
