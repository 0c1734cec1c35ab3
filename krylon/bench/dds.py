"""``krylon bench dds``: DDS with the shipped diffusion priors against DPS and the classical reconstructions.

Tasks (64x64): 4-coil MRI x4 uniform-1D, x8 Gaussian-1D, x8 Gaussian-2D (8 % fully sampled centre); parallel-beam
CT with 8 and 30 views over [0, pi) and 60 views over a 120-degree limited angle; each noiseless and with
complex/real Gaussian noise of ``NOISE`` times the RMS of the measured entries (MRI: the sampled k-space; CT: every
sinogram bin, since rays that miss the object are measured too: the operator's ``measured`` entries).

Test images (never in the training set): random phantoms of :mod:`krylon.datasets.phantoms` with seed
``TEST_SEED`` (the prior was trained on the same generator with seed 1; one per family: ``--size quick`` the first,
an "ellipses" phantom with almost no texture, piecewise constant, TV's ideal case; ``default`` four: ellipses,
jittered Shepp-Logan, polygons, blobs) and ``TEXTURED`` (a "blobs" phantom of smooth bumps,
seed ``TEXTURED_SEED``, picked before any reconstruction was run as the generator's textured case); and
skimage's Shepp-Logan phantom (resized; krylon's own when scikit-image is missing), which is *in-family* (the
generator has a jittered Shepp-Logan family), reported separately.  ``images="unlike"`` (``--images unlike``) runs
the suite on images unlike the training set instead: skimage's camera and coins (:data:`UNLIKE`); ``images="natural"``
on six other skimage photographs held out for choosing priors and settings (:data:`NATURAL`, never a test set).
:func:`targets` counts the issue's targets
on each task's mean over the test images and per image.  Hyper-parameters (DDS's ``eta``, CG steps,
spacing, ``gamma``; DPS's step; the baselines' weights) were chosen by :func:`tune` on other phantoms (seed
``TUNE_SEED``), never on these.

Every method solves over real images when the prior is real (the test images are real): DDS with a magnitude
prior solves ``Re(A^H A) x = Re(A^H y)``, and zero-filled / CG-SENSE / TV get the same constraint (``real=True``).
Methods: DDS at several NFE, DPS (NFE >= 500), the classical baselines (zero-filled or FBP; CG-SENSE / Tikhonov CG;
TV by ADMM -- their weight chosen on the held-out phantoms like DDS's settings (``CLASSICAL_LAMS``), and, as a
reference that no method could use, the best of ``CG_LAMS`` / ``TV_LAMS`` per image against its truth,
"(oracle)").  With the shipped complex prior the MRI tasks are run again on complex phantoms (smooth random
phase) without the real constraint, every method over complex images.  Metrics:
PSNR/SSIM on magnitude images divided by the truth's maximum (:mod:`krylon.solvers.metrics`; complex rows add
``psnr_complex``, the PSNR of the complex error); seconds per image.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..kernels import validate
from ..solvers.diffusion import COMPLEX_SETTINGS, DDS_SETTINGS, SETTING_NAMES, dds_settings  # noqa: F401 (re-exported)
from .common import machine_info, print_table, write_json

SIZES = {  # DPS (a forward and a backward pass per NFE) dominates the run time
    "quick": {"images": 1, "textured": False, "tasks": ("mri-x4-uniform1d", "ct-30views"), "dds_nfe": (20, 50),
              "dps_nfe": 500, "dps_tasks": ("mri-x4-uniform1d",), "dps_noisy": False, "complex": False},
    "default": {"images": 4, "textured": True, "tasks": None, "dds_nfe": (20, 50, 100), "dps_nfe": 500,
                "dps_tasks": None, "dps_noisy": True, "complex": True},
    "paper": {"images": 8, "textured": True, "tasks": None, "dds_nfe": (20, 50, 100), "dps_nfe": 1000,
              "dps_tasks": None, "dps_noisy": True, "complex": True},
}
TASKS = ("mri-x4-uniform1d", "mri-x8-gaussian1d", "mri-x8-gaussian2d", "ct-8views", "ct-30views", "ct-limited120")
TEST_SEED = 424_242  # krylon.datasets.phantoms seed of the unseen test phantoms (the prior trained on seed 1)
TEXTURED_SEED = 424_243  # the textured unseen phantom: family "blobs" (smooth bumps) of this seed
TUNE_SEED = 777  # held-out phantoms for choosing hyper-parameters (tune); never the test images
NOISE = 0.03  # relative to the RMS of the measured entries
# DPS's step size (zeta), timestep spacing and DDIM tail per modality, chosen by tune() the same way
DPS_SETTINGS = {"mri": {"step_size": 1.0, "spacing": 2.0, "denoise_below": 160},
                "ct": {"step_size": 0.03, "spacing": 2.0, "denoise_below": 80}}
# the baselines' weight grids (relative to ||A^H A||): each method's weight per (task, noisy, images) is chosen
# on the held-out phantoms by tune(parts=("classical",)) (CLASSICAL_LAMS), as DDS's settings are; the best weight
# per test image against its truth is reported beside it as an oracle ("TV (oracle)", "CG-SENSE (oracle)").
# Noiseless CG-SENSE takes the grid's smallest weight on a plateau (1e-6 and 1e-5 within 0.04 dB held-out): its
# 50 CGLS iterations' early stop is the regulariser there
CG_LAMS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
TV_LAMS = (1e-5, 3e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
CLASSICAL_LAMS: dict = {  # tune(parts=("classical",)): bench-results/dds-tune-classical-cpu-2026-12-03-stop22.json
    "mri-x4-uniform1d noiseless real": {"cg": 1e-06, "tv": 0.0001},
    "mri-x4-uniform1d noisy real": {"cg": 0.01, "tv": 0.002},
    "mri-x8-gaussian1d noiseless real": {"cg": 1e-06, "tv": 0.0005},
    "mri-x8-gaussian1d noisy real": {"cg": 0.01, "tv": 0.001},
    "mri-x8-gaussian2d noiseless real": {"cg": 1e-06, "tv": 0.0002},
    "mri-x8-gaussian2d noisy real": {"cg": 0.01, "tv": 0.002},
    "ct-8views noiseless real": {"cg": 1e-06, "tv": 0.0005},
    "ct-8views noisy real": {"cg": 0.01, "tv": 0.002},
    "ct-30views noiseless real": {"cg": 1e-06, "tv": 0.0002},
    "ct-30views noisy real": {"cg": 0.01, "tv": 0.001},
    "ct-limited120 noiseless real": {"cg": 1e-06, "tv": 0.0002},
    "ct-limited120 noisy real": {"cg": 0.01, "tv": 0.001},
    "mri-x4-uniform1d noiseless complex": {"cg": 1e-06, "tv": 0.0005},
    "mri-x4-uniform1d noisy complex": {"cg": 0.01, "tv": 0.001},
    "mri-x8-gaussian1d noiseless complex": {"cg": 1e-06, "tv": 0.0005},
    "mri-x8-gaussian1d noisy complex": {"cg": 0.01, "tv": 0.001},
    "mri-x8-gaussian2d noiseless complex": {"cg": 1e-06, "tv": 0.0002},
    "mri-x8-gaussian2d noisy complex": {"cg": 0.01, "tv": 0.002},
}
SIZE = 64
IN_FAMILY = "shepp-logan (in-family)"  # the last test image
TEXTURED = "textured (blobs)"


def image_seeds(names, seed: int = 0) -> list[int]:
    """The samplers' per-image seeds: from each test image's name and ``seed``, so an image's result does not depend
    on the other test images or its position among them (``DDS.solve(seed=[...])``)."""
    import zlib

    return [zlib.crc32(f"{seed}:{name}".encode()) for name in names]


UNLIKE = ("camera", "coins")  # skimage.data images for images="unlike": a photograph and a micrograph, not phantoms
# skimage.data images for images="natural": held out for choosing priors and settings on photographs, never UNLIKE
NATURAL = ("astronaut", "chelsea", "clock", "moon", "cell", "coffee")
IMAGE_SETS = {"unlike": UNLIKE, "natural": NATURAL}


def _skimage_images(which: str, dtype):
    """``images="unlike"`` or ``"natural"``: those skimage images, grey, centre-cropped square, resized to 64x64,
    scaled to [0, 1]; names tagged with the set."""
    import torch

    from ..datasets.phantoms import skimage_grey

    try:
        from skimage.transform import resize
    except ImportError as e:
        raise ValueError(f"images={which!r} needs scikit-image (pip install 'krylon[bench]')") from e
    out = []
    for name in IMAGE_SETS[which]:
        a = skimage_grey(name, why=f"images={which!r}")[0]
        h, w = a.shape
        m = min(h, w)
        a = a[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
        t = torch.from_numpy(resize(a, (SIZE, SIZE), anti_aliasing=True))
        t = t - t.min()
        out.append(t / t.max())
    return torch.stack(out).to(dtype), [f"{n} ({which})" for n in IMAGE_SETS[which]]


def _sampler_seeds(sampler_seeds) -> tuple:
    """``sampler_seeds`` checked: at least one, each an integer >= 0 (run's and tune's)."""
    seeds = tuple(validate.integer(sd, "sampler_seeds", minimum=0) for sd in sampler_seeds)
    if not seeds:
        raise ValueError("sampler_seeds needs at least one seed")
    return seeds


def _images(n: int, dtype, *, textured: bool = False, complex: bool = False):
    """The test images ``(N, 64, 64)``: ``n`` phantoms of ``TEST_SEED``, the textured one, Shepp-Logan; names."""
    import torch

    from ..datasets.phantoms import random_phantoms, shepp_logan

    x = [random_phantoms(n, SIZE, seed=TEST_SEED, complex=complex)]
    names = [f"phantom{i}" for i in range(n)]
    if textured:
        x.append(random_phantoms(1, SIZE, seed=TEXTURED_SEED, families=("blobs",), complex=complex))
        names.append(TEXTURED)
    if complex:  # no Shepp-Logan: a real image has no phase to recover
        return torch.cat(x).to(dtype), names, None
    try:
        from skimage.data import shepp_logan_phantom
        from skimage.transform import resize

        sl = torch.from_numpy(resize(shepp_logan_phantom(), (SIZE, SIZE), anti_aliasing=True))
        sl_name = "skimage shepp_logan_phantom"
    except ImportError:  # a bench extra; krylon's modified Shepp-Logan stands in
        sl, sl_name = shepp_logan(SIZE), "krylon shepp_logan (scikit-image missing)"
    sl = sl / sl.max()
    return torch.cat(x + [sl[None]]).to(dtype), names + [IN_FAMILY], sl_name


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


def _noisy(A, clean):
    """The measurements with the task's noise: ``NOISE`` times the RMS of the measured entries (``A.measured``: MRI the
    sampled k-space, CT every sinogram bin, as rays that miss the object are measured too), seeded."""
    import torch

    from ..operators.imaging import add_noise

    g = torch.Generator(device=clean.device).manual_seed(1)
    return add_noise(clean, NOISE, generator=g, ndim=clean.dim() - 1, support=A.measured)


def _noise_std(A, clean):
    """The standard deviation of :func:`_noisy`'s noise per image ``(B,)``: what DDS weighs the data by."""
    from ..operators.imaging import noise_std

    return noise_std(clean, NOISE, ndim=clean.dim() - 1, support=A.measured).flatten()


def _oracle(fn, lams, x):
    """Run ``fn(lam)`` for every ``lam`` and keep, per image, the reconstruction of best PSNR: ``(images, seconds per
    image per solve, note)``."""
    import torch

    from ..solvers.metrics import psnr

    best, best_p, pick, seconds = None, None, [None] * x.shape[0], 0.0
    for lam in lams:
        t0 = time.perf_counter()
        r = fn(lam)
        seconds += time.perf_counter() - t0
        p = psnr(r, x)
        if best is None:
            best, best_p = r.clone(), p
            pick = [lam] * x.shape[0]
            continue
        better = p > best_p
        best[better] = r[better]
        best_p = torch.where(better, p, best_p)
        pick = [lam if b else q for b, q in zip(better.tolist(), pick)]
    edge = [f"{q:g}{'*' if q in (lams[0], lams[-1]) else ''}" for q in pick]
    return best, seconds / (len(lams) * x.shape[0]), "lam=" + ",".join(edge) + " (per image; * grid edge)"


def _classical(task, A, y, x, L, real, lams=None):
    """The classical reconstructions: ``{name: (images, seconds per image, note)}``; ``real``: over real images, as
    DDS with a real prior.  CG-SENSE / CG-Tikhonov and TV at the weights ``lams`` (``{"cg": lam, "tv": lam}``,
    chosen on held-out phantoms) and, as "<name> (oracle)", at the best weight per image against the truth."""
    from ..solvers.reconstruction import fbp, zero_filled

    out = {}
    n = x.shape[0]

    def timed(fn):
        t0 = time.perf_counter()
        r = fn()
        return r, (time.perf_counter() - t0) / n

    if task.startswith("mri"):
        out["zero-filled"] = (*timed(lambda: zero_filled(A, y, real=real)), "real" if real else "complex")
    else:
        arc = 2 * math.pi / 3 if task == "ct-limited120" else None  # the missing wedge is explicit
        out["FBP"] = (*timed(lambda: fbp(A, y, arc=arc)), "ramp")
    for label, (key, grid, fn) in _weighted(task, A, y, L, real).items():
        runs = {}
        best = _oracle(lambda lam: runs.setdefault(lam, timed(lambda: fn(lam)))[0], grid, x)
        if lams is not None and key in lams:
            lam = lams[key]
            rec, sec = runs[lam] if lam in runs else timed(lambda: fn(lam))
            out[label] = (rec, sec, f"lam={lam:g} (chosen on held-out phantoms)")
        out[f"{label} (oracle)"] = best
    return out


def _weighted(task, A, y, L, real) -> dict:
    """The baselines with a weight: ``{name: (key, grid, lam -> images)}``."""
    from ..solvers.reconstruction import cg_sense, tv_reconstruction

    name = "CG-SENSE" if task.startswith("mri") else "CG-Tikhonov"
    return {name: ("cg", CG_LAMS, lambda lam: cg_sense(A, y, lam=lam, maxiter=50, L=L, real=real)),
            "TV": ("tv", TV_LAMS, lambda lam: tv_reconstruction(A, y, lam=lam, iters=100, cg_iters=5, L=L,
                                                                real=real))}


def classical_lams(task: str, noisy: bool, kind: str = "real") -> dict | None:
    """The baselines' weights ``{"cg": lam, "tv": lam}`` chosen on held-out phantoms for a task (None: not tuned)."""
    return CLASSICAL_LAMS.get(f"{task} {'noisy' if noisy else 'noiseless'} {kind}")


def _row(task, noisy, method, recs, x, names, sec, note, kind):
    """One table row: PSNR/SSIM per image, the unseen phantoms' mean, the textured and in-family ones apart;
    ``recs``: the reconstructions of each sampler seed (one for a deterministic method), whose metrics are averaged
    per image (``psnr_per_seed`` keeps them when there are several)."""
    import torch

    from ..solvers.metrics import psnr, ssim

    ps, ss = torch.stack([psnr(r, x) for r in recs]), torch.stack([ssim(r, x) for r in recs])
    p, s = ps.mean(0), ss.mean(0)
    nfe = int(method.split("-")[1]) if method.startswith(("DDS", "DPS")) else None
    idx = {k: [i for i, n in enumerate(names) if n.startswith("phantom")] for k in ("unseen",)}
    row = {"task": task, "noise": NOISE if noisy else 0.0, "method": method, "nfe": nfe, "images": kind,
           "psnr": float(p.mean()), "ssim": float(s.mean()), "seconds_per_image": sec, "note": note,
           "psnr_per_image": {n: round(float(v), 3) for n, v in zip(names, p)},
           "ssim_per_image": {n: round(float(v), 4) for n, v in zip(names, s)}}
    if len(recs) > 1:
        row["psnr_per_seed"] = {n: [round(float(v), 3) for v in ps[:, i]] for i, n in enumerate(names)}
    if idx["unseen"]:
        row["psnr_unseen"] = float(p[idx["unseen"]].mean())
        row["ssim_unseen"] = float(s[idx["unseen"]].mean())
    for key, name in (("textured", TEXTURED), ("in_family", IN_FAMILY)):
        if name in names:
            row[f"psnr_{key}"], row[f"ssim_{key}"] = float(p[names.index(name)]), float(s[names.index(name)])
    if kind == "complex":  # the complex error, phase included (averaged over the seeds like the others)
        peak = x.abs().flatten(1).amax(1) ** 2
        pc = torch.stack([10 * torch.log10(peak / (r - x).abs().pow(2).flatten(1).mean(1)) for r in recs]).mean(0)
        row["psnr_complex"] = {n: round(float(v), 3) for n, v in zip(names, pc)}
    for n, v, w in zip(names, p, s):  # for the printed table
        row[n] = f"{float(v):.2f}/{float(w):.3f}"
    return row


def _load_prior(model, kind, dev):
    from ..solvers.diffusion import DDS

    return (DDS.load(model) if model else DDS.pretrained(kind=kind)).model.to(dev)


def run(size="default", *, device="cpu", out="bench-out", plot=True, model=None, complex_model=None, cg_steps=None,
        eta=None, dds_nfe=None, dps=True, tasks=None, noisy=None, sampler_seeds=(0,), images="test") -> dict:
    """Run the suite; ``model`` / ``complex_model``: a ``prior.pt`` to use instead of the shipped magnitude / complex
    prior; ``cg_steps``, ``eta``: DDS's for every task (default ``DDS_SETTINGS`` per modality and noise, chosen by
    :func:`tune`); ``dds_nfe``: DDS's NFE
    list instead of the size's; ``dps=False`` skips DPS; ``tasks``: a subset of the size's tasks (to split a long
    run over processes; the JSON is named after them); ``noisy``: True runs only the noisy cases, False only the
    noiseless ones, None both (the JSON of a part is named ``..._noisy`` / ``..._noiseless``); ``sampler_seeds``:
    DDS and DPS run once per seed (each test image seeded by its name and the seed, :func:`image_seeds`) and their
    PSNR / SSIM per image are the means over the runs (single runs move by 1-3 dB on the ill-posed tasks);
    ``images="unlike"``: instead of the test phantoms, images unlike the training set (:data:`UNLIKE`, skimage's
    camera and coins; no complex section; the JSON is named ``..._unlike``); ``images="natural"``: the held-out
    photographs (:data:`NATURAL`) on which the shipped prior and noisy CT's ``gamma`` were chosen, not a test set
    (``..._natural``)."""
    import torch

    from ..solvers.diffusion import DDS, DPS
    from ..solvers.reconstruction import normal_norm

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    seeds = _sampler_seeds(sampler_seeds)
    out = Path(out)
    dev = torch.device(device)
    images = validate.choice(images, "images", ("test", *IMAGE_SETS))
    prior = _load_prior(model, "magnitude", dev)
    if images != "test":
        (x, names), sl_name = _skimage_images(images, torch.float32), f"none (images={images!r})"
    else:
        x, names, sl_name = _images(cfg["images"], torch.float32, textured=cfg.get("textured", False))
    x = x.to(dev)
    all_tasks = cfg["tasks"] or TASKS
    if tasks is not None and not set(tasks) <= set(all_tasks):
        raise ValueError(f"tasks must be among {all_tasks}, got {tasks}")
    if noisy not in (None, True, False):
        raise ValueError(f"noisy must be None, True or False, got {noisy!r}")
    part = ("" if tasks is None else "_" + "+".join(tasks)) + ("" if noisy is None else
                                                               "_noisy" if noisy else "_noiseless") \
        + ("" if images == "test" else f"_{images}")
    cases = (False, True) if noisy is None else (noisy,)
    tasks = all_tasks if tasks is None else tuple(tasks)
    dps_tasks = cfg["dps_tasks"] or TASKS
    real = not prior.complex_images

    def used(table, kind):  # the settings each (modality, noise) case runs with, as the JSON records them
        return {f"{m} {'noisy' if n else 'noiseless'}": dds_settings(m, n, kind=kind, cg_steps=cg_steps, eta=eta)
                for m, n in table}

    result = {"suite": "dds", "size": size, "machine": machine_info(device), "images": names, "image_set": images,
              "dds": used(DDS_SETTINGS, "magnitude"), "dds_complex": used(COMPLEX_SETTINGS, "complex"),
              "dps": DPS_SETTINGS,
              "lams": {"cg": CG_LAMS, "tv": TV_LAMS},
              "shepp_logan": sl_name + " -- in-family (the training generator has a jittered Shepp-Logan family); "
                                       "psnr_unseen averages the TEST_SEED random phantoms only",
              "real_images": real, "constraint": "every method over real images" if real else "complex images",
              "noise_relative": NOISE, "noise_support": {"mri": "sampled k-space", "ct": "all sinogram bins"},
              "noise_weight": "noisy DDS rows: data weight 1 / (lam sigma^2) from each image's noise std "
                              "(solve(noise_std=...)); the settings' fixed gamma is not used",
              "sampler_seeds": list(seeds), "seeding": "per image: zlib.crc32(f'{seed}:{name}') (image_seeds)",
              "rows": [], "prior": prior.config}
    grid = {}
    columns = ["method", "nfe", *names, "seconds_per_image", "note"]

    def one_task(task, prior, x, names, kind, nfes, run_dps):
        A = _operator(task, dev)
        modality = task.split("-")[0]
        real = not prior.complex_images
        clean = A.matvec(x.to(torch.complex64) if modality == "mri" else x)
        L = normal_norm(A)
        for noisy in cases:
            y = _noisy(A, clean) if noisy else clean
            recs = _classical(task, A, y, x, L, real, classical_lams(task, noisy, kind))
            st = dds_settings(modality, noisy, kind="complex" if prior.complex_images else "magnitude",
                              cg_steps=cg_steps, eta=eta)
            recs = {m: ([rec], sec, note) for m, (rec, sec, note) in recs.items()}

            def sample(sampler, n, settings, **kw):  # one run per sampler seed; seconds per image, median over runs
                runs = [sampler.solve(A, y, nfe=n, seed=image_seeds(names, sd), **kw) for sd in seeds]
                sec = sorted(r.seconds for r in runs)[len(runs) // 2] / x.shape[0]
                return [r.x for r in runs], sec, ", ".join(f"{k}={v}" for k, v in settings.items())

            # noisy data: the weight from each image's noise level (lam), as a user who knows the noise would
            sd = _noise_std(A, clean) if noisy else None
            shown = {k: v for k, v in st.items() if not (noisy and k == "gamma")}  # lam replaces gamma
            for nfe in nfes:
                recs[f"DDS-{nfe}"] = sample(DDS(prior, **st), nfe, shown, noise_std=sd)
            if run_dps and (not noisy or cfg.get("dps_noisy", False)):
                dst = DPS_SETTINGS[modality]
                recs[f"DPS-{cfg['dps_nfe']}"] = sample(DPS(prior, **dst), cfg["dps_nfe"], dst)
            rows = [_row(task, noisy, m, rec, x, names, sec, note, kind) for m, (rec, sec, note) in recs.items()]
            result["rows"].extend(rows)
            if not noisy and kind == "real":
                grid[task] = {k: v[0][0].detach().cpu() for k, v in recs.items()}
            print_table(rows, columns, title=f"dds {task} {'noise ' + str(NOISE) if noisy else 'noiseless'} "
                        f"({kind} images, {SIZE}x{SIZE}; PSNR dB / SSIM per image)")

    for task in tasks:
        one_task(task, prior, x, names, "real" if real else "complex", dds_nfe or cfg["dds_nfe"],
                 dps and task in dps_tasks)
    if images != "test":
        result["complex"] = f"skipped: images={images!r} runs the magnitude prior only"
    elif cfg.get("complex", False):  # the complex prior on complex phantoms, MRI only, no real constraint
        try:
            cprior = _load_prior(complex_model, "complex", dev)
        except (ValueError, FileNotFoundError) as e:  # no complex prior shipped with this copy
            result["complex"] = f"skipped: {e}"
        else:
            xc, cnames, _ = _images(cfg["images"], torch.complex64, textured=cfg.get("textured", False), complex=True)
            result["complex"] = {"prior": cprior.config, "images": cnames}
            columns = ["method", "nfe", *cnames, "seconds_per_image", "note"]
            for task in tasks:
                if task.startswith("mri"):
                    one_task(task, cprior, xc.to(dev), cnames, "complex", (50,), False)
    result["targets"] = targets(result)
    for kind, t in result["targets"].items():
        if t["cases"]:
            print(f"targets ({kind} images, {t['dds']}): " + "; ".join(
                f"{'>= best classical + 1 dB' if k == 'classical' else '>= DPS'}: per task {t['per_task'][k]}, "
                f"per image {t['per_image'][k]}" for k in t["per_task"]))
    write_json(out / f"dds_{size}{part}.json", result)
    if plot:
        _plot(grid, x.cpu(), out / f"dds_{size}{part}.png", names.index(TEXTURED) if TEXTURED in names else -1)
    return result


def _grid(etas, ramps, spacings=(4.0,), denoise=(0,)):
    """DDS keyword sets: every eta x CG ramp ``(cg_steps, cg_power)`` x spacing x ``denoise_below``, with the
    carried correction."""
    return tuple({"eta": e, "cg_steps": c, "cg_power": p, "carry_correction": True, "spacing": sp, "denoise_below": d}
                 for e in etas for c, p in ramps for sp in spacings for d in denoise)


def mean_cg_steps(settings: dict, nfe: int) -> float:
    """CG iterations per sampling step, on average, of DDS with these keyword ``settings`` at ``nfe`` steps."""
    from ..solvers.diffusion import DDS

    st = {k: v for k, v in settings.items() if k in ("cg_steps", "cg_power") and v is not None}
    counts = DDS.cg_counts(nfe, **st)
    return sum(counts) / nfe


DDS_GRID = _grid((0.5, 0.85, 1.0), (((2, 50), 2.0), ((1, 40), 4.0), ((1, 25), 2.0)),
                 denoise=(0, 1, 2, 4, 10, 20, 160)) + tuple(
    {"eta": e, "cg_steps": 50, "carry_correction": False, "spacing": 4.0, "denoise_below": 0}
    for e in (0.5, 1.0))  # stop-18's setting
NOISY_GRID = tuple({**g, "final_weight": f} for g in _grid((1.0,), (((2, 20), 2.0),), (2.0, 3.0),
                                                         denoise=(0, 10, 40, 100, 160)) for f in (1.0, 0.3, 0.0)) + (
    {"eta": 1.0, "cg_steps": 5, "carry_correction": False, "spacing": 3.0, "denoise_below": 0},)  # stop-18's setting


def best_setting(rows, keys, *, nfe: int = 50, budget=None) -> tuple:
    """The values of ``keys`` that :func:`tune` picks from its result ``rows`` (each a dict with those keys,
    ``task``, ``noise``, ``psnr`` and optionally the held-out ``set``): the largest PSNR summed over the (task,
    noise, set) cases, or, among the settings within 0.1 dB of that one on every case, the fewest CG steps per
    sampling step (cheaper at the same quality), then the shortest deterministic tail (``denoise_below``, a
    missing one counted as 0: the least departure from sampling the posterior), then the larger sum; only settings
    within the CG ``budget``.  Per case, not on the sum: a cheaper setting may not buy its saving with one task's
    loss.  A setting with a non-finite PSNR (a diverged run) is never picked."""
    def combo(r):
        return tuple(tuple(v) if isinstance(v, list) else v for v in (r.get(k) for k in keys))

    if not rows:
        raise ValueError("best_setting needs at least one result row")
    per_case = {}  # setting -> {case: PSNR}
    for r in rows:
        per_case.setdefault(combo(r), {})[r["task"], r["noise"], r.get("set")] = r["psnr"]
    score = {c: sum(v.values()) for c, v in per_case.items()}
    cost = {c: mean_cg_steps(dict(zip(keys, c)), nfe) if "cg_steps" in keys else 0.0 for c in score}
    combos = {c for c in score if (budget is None or cost[c] <= budget) and math.isfinite(score[c])}
    if not combos:
        raise ValueError(f"no setting in the grid has a finite PSNR within the CG budget {budget}")
    top = per_case[max(combos, key=score.get)]
    near = [c for c in combos if all(per_case[c].get(k, -math.inf) >= v - 0.1 for k, v in top.items())]
    tail = keys.index("denoise_below") if "denoise_below" in keys else None
    return min(near, key=lambda c: (cost[c], (c[tail] or 0) if tail is not None else 0, -score[c], repr(c)))


# DPS's (step_size, spacing, denoise_below) per modality: stop 18's grid, then the chosen pair with DDIM tails
DPS_GRID = {m: ((st, 1.0, 0), (st, 2.0, 0), (st, 3.0, 0), (big, 2.0, 0))
            + tuple((st, 2.0, d) for d in (10, 40, 80, 160, 320)) for m, st, big in (("mri", 1.0, 3.0), ("ct", 0.03, 0.1))}


def _heldout_sets(heldout, images: int, seed: int, cplx: bool, dev) -> dict:
    """tune's held-out image sets by name (see :func:`tune`), on ``dev``."""
    import torch

    from ..datasets.phantoms import random_phantoms

    heldout = (("phantoms",) if cplx else ("phantoms", "natural")) if heldout is None else tuple(heldout)
    unknown = set(heldout) - {"phantoms", "natural"}
    if unknown or not heldout:
        raise ValueError(f"heldout must name 'phantoms' and/or 'natural', got {heldout!r}")
    if cplx and "natural" in heldout:
        raise ValueError("heldout='natural' holds real photographs; the complex prior is tuned on complex phantoms")
    sets = {}
    for name in dict.fromkeys(heldout):
        x = (random_phantoms(images, SIZE, seed=seed, complex=cplx) if name == "phantoms"
             else _skimage_images("natural", torch.float32)[0])
        sets[name] = x.to(torch.complex64 if cplx else torch.float32).to(dev)
    return sets


def tune(*, model=None, images: int = 4, seed: int = TUNE_SEED, nfe: int = 50, tasks=None, dds_grid=DDS_GRID,
         noisy_grid=NOISY_GRID, lams=None, cg_budget=None, dps_grid=None, dps_nfe: int = 500, dps_images: int = 2,
         dps_tasks=("mri-x4-uniform1d", "ct-30views"), parts=("dds", "noisy", "dps"), kind="magnitude", out=None,
         device="cpu", sampler_seeds=(0, 1), heldout=None) -> dict:
    """Choose DDS's settings per modality from ``dds_grid`` (noiseless tasks; dicts of DDS keyword arguments) by the
    largest PSNR summed over the modality's tasks, or within 0.1 dB of it on every (task, noise, set) case the fewest
    CG steps and then the shortest deterministic tail (:func:`best_setting`), among the settings whose mean CG steps per sampling step
    are within ``cg_budget[modality]`` (default ``{"ct": 10}``: about
    one network call's worth of CT projections on a CPU, so that DDS-50 stays >= 10x faster than DPS-500; MRI's
    cheaper steps need none; BENCHMARKS.md has the timings); for noisy data (noise ``NOISE``) the
    same from ``noisy_grid`` x ``lams[modality]`` (a joint grid; the data weight ``1 / (lam sigma^2)`` from each
    image's noise, with the ``"snr"`` weighting over the steps); and DPS's
    ``(step_size, spacing, denoise_below)`` per modality from ``dps_grid`` (:data:`DPS_GRID`), by PSNR summed over
    ``dps_tasks`` noiseless and noisy; all by mean PSNR on each held-out set of ``heldout``, summed over the sets
    (a case is a task, noise and set): ``"phantoms"``, ``random_phantoms(images, 64, seed=seed)`` (one per family),
    and ``"natural"``, the photographs :data:`NATURAL` (needs scikit-image); never the benchmark's test images.
    The default is both for the magnitude prior (how :data:`DDS_SETTINGS` were chosen: settings that suit phantoms
    only over-fit the noise of photographs) and the phantoms for the complex one.
    ``parts`` picks what to run; ``"classical"`` (not run by default) chooses the baselines' weights
    per task, noise and image kind (real; complex phantoms for MRI) from ``CG_LAMS`` / ``TV_LAMS``, the largest
    mean PSNR on the held-out phantoms for each (whatever ``heldout``), the values of :data:`CLASSICAL_LAMS`.  ``kind="complex"``: the complex
    prior on complex phantoms of the same seed, MRI tasks only (:data:`COMPLEX_SETTINGS`).  Prints the tables,
    writes ``out/dds_tune.json``.  Each sampler setting is scored by its PSNR averaged over the images and over
    ``sampler_seeds`` (two by default: one sampling run per image is too noisy to rank settings whose differences
    are a fraction of a dB, the ill-posed noisy tasks most)."""
    import torch

    from ..datasets.phantoms import random_phantoms
    from ..solvers.diffusion import DDS, DPS
    from ..solvers.metrics import psnr

    seeds = _sampler_seeds(sampler_seeds)
    dev = torch.device(device)
    prior = _load_prior(model, kind, dev)
    cplx = prior.complex_images
    tasks = tasks or tuple(t for t in TASKS if t.startswith("mri") or not cplx)
    dps_tasks = tuple(t for t in dps_tasks if t.startswith("mri") or not cplx)
    lams = lams or {m: (0.15, 0.2, 0.3, 0.45) for m in ("mri", "ct")}
    cg_budget = {"ct": 10.0} if cg_budget is None else cg_budget
    dps_grid = dps_grid or DPS_GRID
    sets = _heldout_sets(heldout, images, seed, cplx, dev)
    rows, choice = [], {}

    def measure(task, noisy, n_img=None):  # per held-out set: (name, A, y, x, noise std)
        A = _operator(task, dev)
        for name, x in sets.items():
            xi = x[:n_img] if n_img else x
            y = A.matvec(xi.to(torch.complex64) if task.startswith("mri") else xi)
            yield name, A, (_noisy(A, y) if noisy else y), xi, (_noise_std(A, y) if noisy else None)

    def record(part, task, noisy, sampler, held, xi, A, y, n, noise_std=None, **kw):
        runs = [sampler.solve(A, y, nfe=n, seed=sd, noise_std=noise_std) for sd in seeds]
        per_seed = [float(psnr(r.x, xi).mean()) for r in runs]
        rows.append({"part": part, "task": task, "noise": NOISE if noisy else 0.0, "set": held, **kw,
                     "psnr": sum(per_seed) / len(per_seed), "psnr_per_seed": [round(v, 3) for v in per_seed],
                     "seconds": round(sum(r.seconds for r in runs) / len(runs), 2)})
        print_table(rows[-1:], list(rows[-1]), title=None)

    def best(part, keys, select=lambda r: True, budget=None):
        return best_setting([r for r in rows if r["part"] == part and select(r)], keys, nfe=nfe, budget=budget)

    def settings(grid):
        return tuple(dict.fromkeys(k for g in grid for k in g))  # every key any entry sets, in order

    def chosen(part, keys, m):
        c = best(part, keys, lambda r: r["task"].startswith(m), cg_budget.get(m))
        return {k: v for k, v in zip(keys, c) if v is not None}

    if "dds" in parts:
        keys = settings(dds_grid)
        for task in tasks:
            for held, A, y, xi, _ in measure(task, False):
                for g in dds_grid:
                    record("dds", task, False, DDS(prior, gamma=None, **g), held, xi, A, y, nfe, **g)
        choice["dds"] = {m: chosen("dds", keys, m) for m in ("mri", "ct") if any(t.startswith(m) for t in tasks)}
    if "noisy" in parts:
        keys = settings(noisy_grid) + ("lam",)
        for task in tasks:
            modality = task.split("-")[0]
            for held, A, y, xi, sd in measure(task, True):
                for g in noisy_grid:
                    for lam in lams[modality]:
                        record("noisy", task, True, DDS(prior, lam=lam, gamma_schedule="snr", **g), held, xi, A, y,
                               nfe, noise_std=sd, **g, lam=lam)
        choice["noisy"] = {m: {**chosen("noisy", keys, m), "gamma_schedule": "snr"}
                           for m in ("mri", "ct") if any(t.startswith(m) for t in tasks)}
    if "dps" in parts:
        keys = ("step_size", "spacing", "denoise_below")
        for task in dps_tasks:
            modality = task.split("-")[0]
            for noisy in (False, True):
                for held, A, y, xi, _ in measure(task, noisy, dps_images):
                    for g in dps_grid[modality]:
                        kw = dict(zip(keys, g))
                        record("dps", task, noisy, DPS(prior, **kw), held, xi, A, y, dps_nfe, **kw)
        choice["dps"] = {m: dict(zip(keys, best("dps", keys, lambda r, m=m: r["task"].startswith(m))))
                         for m in ("mri", "ct") if any(t.startswith(m) for t in dps_tasks)}
    if "classical" in parts:
        from ..solvers.reconstruction import normal_norm

        lams = {}
        for ik in ("real", "complex"):
            xk = random_phantoms(images, SIZE, seed=seed, complex=ik == "complex").to(dev)
            for task in tasks:
                if ik == "complex" and not task.startswith("mri"):
                    continue
                A = _operator(task, dev)
                clean = A.matvec(xk.to(torch.complex64) if task.startswith("mri") else xk.float())
                L = normal_norm(A)
                for noisy in (False, True):
                    y = _noisy(A, clean) if noisy else clean
                    key = f"{task} {'noisy' if noisy else 'noiseless'} {ik}"
                    lams[key] = {}
                    for m, (short, grid, fn) in _weighted(task, A, y, L, ik == "real").items():
                        score = {lam: float(psnr(fn(lam), xk).mean()) for lam in grid}
                        lams[key][short] = max(score, key=score.get)
                        rows.extend({"part": "classical", "task": task, "noise": NOISE if noisy else 0.0,
                                     "images": ik, "method": m, "lam": lam, "psnr": round(p, 3)}
                                    for lam, p in score.items())
                    print(key, lams[key], flush=True)
        choice["classical"] = lams
    result = {"seed": seed, "images": images, "heldout": list(sets), "sampler_seeds": list(seeds), "nfe": nfe, "kind": kind,
              "choice": choice, "rows": rows,
              "prior": prior.config}
    print("chosen:", choice)
    if out:
        write_json(Path(out) / "dds_tune.json", result)
    return result


def _plot(grid: dict, x, path: Path, i: int = -1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grid:
        return
    i = i % x.shape[0]  # the textured unseen image, else the last
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


def targets(result: dict, nfe: int | None = None) -> dict:
    """The issue's accuracy targets counted from a :func:`run` result, per image kind ("real", "complex"): DDS at
    ``nfe`` NFE (default 50, or the most a run without 50 has) at least 1 dB above the best classical
    reconstruction (weights chosen on held-out phantoms; the oracles are left out) and at least DPS's PSNR, counted
    per (task, noise) case on the mean PSNR over the test images (the papers' convention) and per image.
    ``{kind: {"dds": method, "cases": [...], "per_task": {...}, "per_image": {...}, "misses": {...}}}``; a count is
    ``[met, of]``; each case lists its margins (``misses`` names the image cases missed)."""
    out = {}
    if nfe is None:
        run = {int(r["method"].split("-")[1]) for r in result["rows"] if r["method"].startswith("DDS-")}
        nfe = 50 if 50 in run or not run else max(run)
    kinds = dict.fromkeys(r.get("images", "real") for r in result["rows"])
    for kind in kinds:
        rows = [r for r in result["rows"] if r.get("images", "real") == kind]
        cases, counts = [], {"classical": [[0, 0], [0, 0]], "dps": [[0, 0], [0, 0]]}
        misses = {"classical": [], "dps": []}
        for task, noise in dict.fromkeys((r["task"], r["noise"]) for r in rows):
            here = [r for r in rows if r["task"] == task and r["noise"] == noise]
            dds = next((r for r in here if r["method"] == f"DDS-{nfe}"), None)
            if dds is None:
                continue
            classical = [r for r in here if not r["method"].startswith(("DDS", "DPS"))
                         and not r["method"].endswith("(oracle)")]
            best = max(classical, key=lambda r: r["psnr"])
            case = {"task": task, "noise": noise, "dds": round(dds["psnr"], 2), "best_classical": best["method"],
                    "vs_classical": round(dds["psnr"] - best["psnr"], 2)}
            # the PSNR DDS must reach, on the mean and per image
            need = {"classical": (best["psnr"] + 1.0, {n: max(r["psnr_per_image"][n] for r in classical) + 1.0
                                                      for n in dds["psnr_per_image"]})}
            dps = next((r for r in here if r["method"].startswith("DPS")), None)
            if dps is not None:
                case["dps"], case["vs_dps"] = round(dps["psnr"], 2), round(dds["psnr"] - dps["psnr"], 2)
                need["dps"] = (dps["psnr"], dps["psnr_per_image"])
            for name, (mean, per_image) in need.items():
                counts[name][0][0] += dds["psnr"] >= mean
                counts[name][0][1] += 1
                for img, d in dds["psnr_per_image"].items():
                    met = d >= per_image[img]
                    counts[name][1][0] += met
                    counts[name][1][1] += 1
                    if not met:
                        misses[name].append(f"{task} {'noisy' if noise else 'noiseless'} {img}")
            cases.append(case)
        out[kind] = {"dds": f"DDS-{nfe}", "cases": cases,
                     "per_task": {k: v[0] for k, v in counts.items() if v[0][1]},
                     "per_image": {k: v[1] for k, v in counts.items() if v[1][1]},
                     "misses": {k: v for k, v in misses.items() if counts[k][1][1]}}
    return out


def summary(result: dict) -> list[dict]:
    """Per task, noise level and image kind: DDS at 50 NFE (or the largest run) against the best classical
    baseline (weights chosen on held-out phantoms; the per-image oracles are left out), in PSNR on the unseen
    phantoms (on the mean over a skimage image set when there are none) and, separately, on the in-family
    Shepp-Logan; DDS-50's seconds per image against DPS's where DPS ran; and the PSNR on the textured unseen
    phantom."""
    from .summary import HIGHER, LOWER, compare

    out = []
    keys = dict.fromkeys((r["task"], r["noise"], r.get("images", "real")) for r in result["rows"])
    for task, noise, kind in keys:
        rows = [r for r in result["rows"] if r["task"] == task and r["noise"] == noise and r.get("images", "real") == kind]
        dds = [r for r in rows if r["method"].startswith("DDS")]
        pick = next((r for r in dds if r["nfe"] == 50), dds[-1] if dds else None)
        label = f"{task}{' noisy' if noise else ''}{' complex' if kind == 'complex' else ''}"

        def psnr_row(key, metric):
            if not any(key in r for r in rows):
                return
            # the oracle rows (weight picked against the test image's truth) are a reference, not a peer
            classical = [(r["method"], r.get(key)) for r in rows
                         if not r["method"].startswith(("DDS", "DPS")) and not r["method"].endswith("(oracle)")]
            out.append(compare("dds", label, metric, [(pick["method"], pick.get(key))] if pick else [], classical,
                               better=HIGHER))

        psnr_row("psnr_unseen", "PSNR dB unseen")
        if not any("psnr_unseen" in r for r in rows):  # images="unlike" / "natural": no phantoms, the set's mean
            psnr_row("psnr", "PSNR dB mean")
        psnr_row("psnr_in_family", "PSNR dB in-family")
        dps = [r for r in rows if r["method"].startswith("DPS")]
        if dps and pick:
            out.append(compare("dds", label, "s/image vs DPS", [(pick["method"], pick["seconds_per_image"])],
                               [(dps[0]["method"], dps[0]["seconds_per_image"])], better=LOWER))
        psnr_row("psnr_textured", "PSNR dB textured")
    return out
