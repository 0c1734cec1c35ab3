"""``krylon bench dds``: DDS with the shipped diffusion prior against DPS and the classical reconstructions.

Tasks (64x64): 4-coil MRI x4 uniform-1D, x8 Gaussian-1D, x8 Gaussian-2D (8 % fully sampled centre); parallel-beam
CT with 8 and 30 views over [0, pi) and 60 views over a 120-degree limited angle; each noiseless and with
complex/real Gaussian noise of ``NOISE`` times the RMS of the measured entries (MRI: the sampled k-space; CT: every
sinogram bin, ``support="all"``, since rays that miss the object are measured too).

Images: random phantoms of :mod:`krylon.datasets.phantoms` (a generator the shipped prior never saw: the
"unseen" columns) and skimage's Shepp-Logan phantom (resized; krylon's own when scikit-image is missing), which
is *in-family*: 30 % of the shipped prior's training images were jittered modified Shepp-Logan phantoms, so its
column is reported separately and is not evidence of generalisation.

Every method solves over real images when the prior is real (the test images are real): DDS with a magnitude
prior solves ``Re(A^H A) x = Re(A^H y)``, and zero-filled / CG-SENSE / TV get the same constraint (``real=True``).
Methods: DDS at several NFE, DPS (NFE >= 500), the classical baselines (zero-filled or FBP; CG-SENSE / Tikhonov CG;
TV by ADMM -- their weights picked per task as the best of a small grid against the truth, an oracle that
favours the baselines).  Metrics: PSNR/SSIM on magnitude images divided by the truth's maximum
(:mod:`krylon.solvers.metrics`); seconds per image.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .common import machine_info, print_table, write_json

SIZES = {  # DPS (a forward and a backward pass per NFE) dominates: it runs on the noiseless dps_tasks only
    "quick": {"images": 1, "tasks": ("mri-x4-uniform1d", "ct-30views"), "dds_nfe": (20, 50), "dps_nfe": 500,
              "dps_tasks": ("mri-x4-uniform1d",)},
    "default": {"images": 1, "tasks": None, "dds_nfe": (20, 50, 100), "dps_nfe": 500,
                "dps_tasks": ("mri-x4-uniform1d", "ct-30views")},
    "paper": {"images": 8, "tasks": None, "dds_nfe": (20, 50, 100), "dps_nfe": 1000, "dps_tasks": None},
}
TASKS = ("mri-x4-uniform1d", "mri-x8-gaussian1d", "mri-x8-gaussian2d", "ct-8views", "ct-30views", "ct-limited120")
TEST_SEED = 424_242  # krylon.datasets.phantoms seed; the shipped prior was trained on another generator's images
NOISE = 0.03  # relative to the RMS of the measured entries
# data weight of DDS's noisy consistency step, (I + gamma A^H A) x = x0 + gamma A^H y, per modality (CT's A^H A
# is ~300x MRI's), and DPS's step: picked on a small sweep with other phantoms (seed 777; BENCHMARKS.md)
DDS_GAMMA = {"mri": 30.0, "ct": 0.01}
DPS_STEP = {"mri": 3.0, "ct": 0.1}
SIZE = 64
IN_FAMILY = "shepp-logan (in-family)"  # the last test image; near the prior's training data (module notes)


def _images(n: int, dtype):
    import torch

    from ..datasets.phantoms import random_phantoms, shepp_logan

    x = random_phantoms(n, SIZE, seed=TEST_SEED).to(dtype)
    try:
        from skimage.data import shepp_logan_phantom
        from skimage.transform import resize

        sl = torch.from_numpy(resize(shepp_logan_phantom(), (SIZE, SIZE), anti_aliasing=True)).to(dtype)
        sl_name = "skimage shepp_logan_phantom"
    except ImportError:  # a bench extra; krylon's modified Shepp-Logan stands in
        sl, sl_name = shepp_logan(SIZE).to(dtype), "krylon shepp_logan (scikit-image missing)"
    sl = sl / sl.max()
    return torch.cat([x, sl[None]]), [f"phantom{i}" for i in range(n)] + [IN_FAMILY], sl_name


def _operator(task: str, device):
    import torch

    from ..operators import MRI, Radon
    from ..operators.imaging import coil_maps, mri_mask

    if task.startswith("mri"):
        _, acc, kind = task.split("-")
        mask = mri_mask((SIZE, SIZE), kind=kind, acceleration=int(acc[1:]), center_fraction=0.08, seed=0)
        return MRI(mask, coil_maps((SIZE, SIZE), n_coils=4)).to(device)
    if task == "ct-limited120":
        angles = torch.arange(60, dtype=torch.float64) * (2 * math.pi / 3) / 60
    else:
        v = int(task.split("-")[1].removesuffix("views"))
        angles = torch.arange(v, dtype=torch.float64) * math.pi / v
    return Radon((SIZE, SIZE), angles=angles, device=device)


def _noisy(task: str, clean):
    """The measurements with the task's noise: ``NOISE`` times the RMS of the measured entries, seeded; MRI: on the
    sampled k-space, CT: on every sinogram bin (rays that miss the object, zero bins, are measured too)."""
    import torch

    from ..operators.imaging import add_noise

    g = torch.Generator(device=clean.device).manual_seed(1)
    support = "all" if task.startswith("ct") else None
    return add_noise(clean, NOISE, generator=g, ndim=clean.dim() - 1, support=support)


def _classical(task, A, y, x, L, real):
    """The classical reconstructions: ``{name: (images, seconds per image, note)}``; weights picked by PSNR;
    ``real``: over real images, as DDS with a real prior."""
    from ..solvers.metrics import psnr
    from ..solvers.reconstruction import cg_sense, fbp, tv_reconstruction, zero_filled

    out = {}
    n = x.shape[0]

    def timed(fn):
        t0 = time.perf_counter()
        r = fn()
        return r, (time.perf_counter() - t0) / n

    if task.startswith("mri"):
        out["zero-filled"] = (*timed(lambda: zero_filled(A, y, real=real)), "real" if real else "")
    else:
        arc = 2 * math.pi / 3 if task == "ct-limited120" else None  # the missing wedge is explicit
        out["FBP"] = (*timed(lambda: fbp(A, y, arc=arc)), "ramp")
    name = "CG-SENSE" if task.startswith("mri") else "CG-Tikhonov"
    best = None
    for lam in (1e-3, 1e-2, 1e-1):
        r, s = timed(lambda: cg_sense(A, y, lam=lam, maxiter=50, L=L, real=real))
        p = float(psnr(r, x).mean())
        if best is None or p > best[0]:
            best = (p, r, s, f"lam={lam:g}")
    out[name] = best[1:]
    best = None
    for lam in (1e-3, 1e-2):
        r, s = timed(lambda: tv_reconstruction(A, y, lam=lam, iters=100, cg_iters=5, L=L, real=real))
        p = float(psnr(r, x).mean())
        if best is None or p > best[0]:
            best = (p, r, s, f"lam={lam:g}")
    out["TV"] = best[1:]
    return out


def run(size="default", *, device="cpu", out="bench-out", plot=True, model=None, cg_steps=5, eta=0.85,
        dds_nfe=None, dps=True) -> dict:
    """Run the suite; ``model``: a ``prior.pt`` to use instead of the shipped prior; ``cg_steps``, ``eta``: DDS's
    (default: the paper's 5 and 0.85); ``dds_nfe``: DDS's NFE list instead of the size's; ``dps=False`` skips DPS."""
    import torch

    from ..solvers.diffusion import DDS, DPS
    from ..solvers.metrics import psnr, ssim
    from ..solvers.reconstruction import normal_norm

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    out = Path(out)
    dev = torch.device(device)
    prior = DDS.load(model).model if model else DDS.pretrained().model
    prior = prior.to(dev)
    x, names, sl_name = _images(cfg["images"], torch.float32)
    x = x.to(dev)
    tasks = cfg["tasks"] or TASKS
    dps_tasks = cfg["dps_tasks"] or TASKS
    real = not prior.complex_images
    result = {"suite": "dds", "size": size, "machine": machine_info(device), "images": names,
              "dds": {"cg_steps": cg_steps, "eta": eta},
              "shepp_logan": sl_name + " -- in-family: 30% of the shipped prior's training images were jittered "
                                       "modified Shepp-Logan; psnr_unseen/ssim_unseen average the random phantoms only",
              "real_images": real, "constraint": "every method over real images" if real else "complex images",
              "noise_relative": NOISE, "noise_support": {"mri": "sampled k-space", "ct": "all sinogram bins"},
              "rows": [], "prior": prior.config}
    grid = {}
    for task in tasks:
        A = _operator(task, dev)
        modality = task.split("-")[0]
        clean = A.matvec(x.to(torch.complex64) if modality == "mri" else x)
        L = normal_norm(A)
        for noisy in (False, True):
            y = _noisy(task, clean) if noisy else clean
            recs = {k: v for k, v in _classical(task, A, y, x, L, real).items()}
            gamma = DDS_GAMMA[modality] if noisy else None
            for nfe in dds_nfe or cfg["dds_nfe"]:
                r = DDS(prior, gamma=gamma, cg_steps=cg_steps, eta=eta).solve(A, y, nfe=nfe, seed=0)
                recs[f"DDS-{nfe}"] = (r.x, r.seconds / x.shape[0], f"gamma={gamma}")
            if dps and task in dps_tasks and not noisy:
                r = DPS(prior, step_size=DPS_STEP[modality]).solve(A, y, nfe=cfg["dps_nfe"], seed=0)
                recs[f"DPS-{cfg['dps_nfe']}"] = (r.x, r.seconds / x.shape[0], f"step={DPS_STEP[modality]}")
            for method, (rec, sec, note) in recs.items():
                p, s = psnr(rec, x), ssim(rec, x)
                nfe = int(method.split("-")[1]) if method.startswith(("DDS", "DPS")) else None
                result["rows"].append({"task": task, "noise": NOISE if noisy else 0.0, "method": method, "nfe": nfe,
                                       "psnr_unseen": float(p[:-1].mean()) if len(p) > 1 else None,
                                       "ssim_unseen": float(s[:-1].mean()) if len(p) > 1 else None,
                                       "psnr_in_family": float(p[-1]), "ssim_in_family": float(s[-1]),
                                       "psnr": float(p.mean()), "ssim": float(s.mean()), "seconds_per_image": sec,
                                       "psnr_per_image": [round(float(v), 3) for v in p], "note": note})
            if not noisy:
                grid[task] = {k: v[0].detach().cpu() for k, v in recs.items()}
            print_table([r for r in result["rows"] if r["task"] == task and r["noise"] == (NOISE if noisy else 0.0)],
                        ["method", "nfe", "psnr_unseen", "ssim_unseen", "psnr_in_family", "ssim_in_family",
                         "seconds_per_image", "note"],
                        title=f"dds {task} {'noise ' + str(NOISE) if noisy else 'noiseless'} "
                              f"({len(names) - 1} unseen phantoms + Shepp-Logan in-family, {SIZE}x{SIZE}, "
                              f"{'every method over real images' if real else 'complex images'})")
    write_json(out / f"dds_{size}.json", result)
    if plot:
        _plot(grid, x.cpu(), out / f"dds_{size}.png")
    return result


def _plot(grid: dict, x, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grid:
        return
    i = x.shape[0] - 1  # the Shepp-Logan image
    rows = list(grid)
    ncols = 1 + max(len([m for m in g if m != "zero-filled"]) for g in grid.values())
    fig, ax = plt.subplots(2 * len(rows), ncols, figsize=(1.8 * ncols, 3.6 * len(rows)), squeeze=False)
    for r, task in enumerate(rows):
        cols = ["truth"] + [m for m in grid[task] if m != "zero-filled"]
        for c, m in enumerate(cols):
            img = x[i] if m == "truth" else grid[task][m][i].abs()
            ax[2 * r, c].imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            ax[2 * r, c].set_title(f"{task}\n{m}" if c == 0 else m, fontsize=7)
            ax[2 * r + 1, c].imshow((img - x[i]).abs().numpy(), cmap="inferno", vmin=0, vmax=0.2)
            ax[2 * r + 1, c].set_title("|error| (0..0.2)" if c == 0 else "", fontsize=7)
    for a in ax.flat:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(result: dict) -> list[dict]:
    """Per task and noise level: DDS at 50 NFE (or the largest run) against the best classical baseline, in PSNR
    on the unseen phantoms and, separately, on the in-family Shepp-Logan; and DDS-50's seconds per image against
    DPS's where DPS ran."""
    from .summary import HIGHER, LOWER, compare

    out = []
    keys = dict.fromkeys((r["task"], r["noise"]) for r in result["rows"])
    for task, noise in keys:
        rows = [r for r in result["rows"] if r["task"] == task and r["noise"] == noise]
        dds = [r for r in rows if r["method"].startswith("DDS")]
        pick = next((r for r in dds if r["nfe"] == 50), dds[-1] if dds else None)
        label = f"{task}{' noisy' if noise else ''}"
        for key, metric in (("psnr_unseen", "PSNR dB unseen"), ("psnr_in_family", "PSNR dB in-family")):
            classical = [(r["method"], r.get(key)) for r in rows if not r["method"].startswith(("DDS", "DPS"))]
            out.append(compare("dds", label, metric, [(pick["method"], pick.get(key))] if pick else [], classical,
                               better=HIGHER))
        dps = [r for r in rows if r["method"].startswith("DPS")]
        if dps and pick:
            out.append(compare("dds", label, "s/image vs DPS", [(pick["method"], pick["seconds_per_image"])],
                               [(dps[0]["method"], dps[0]["seconds_per_image"])], better=LOWER))
    return out
