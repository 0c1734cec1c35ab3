"""DDS: ``krylon generate phantoms``, ``krylon train diffusion`` (the prior) and ``krylon reconstruct mri|ct``."""

from __future__ import annotations

from ._common import command_line, main_rank, ranks, torchrun_world


def register(cmd) -> None:
    _add_generate_phantoms(cmd.generate)
    _add_train_reconstruct(cmd.top, cmd.train)


def _add_generate_phantoms(gsub) -> None:
    q = gsub.add_parser("phantoms", help="random image phantoms for a diffusion prior (ellipses, perturbed Shepp-Logan, "
                        "polygons, blobs; dead leaves and rough textures on request; max magnitude 1): field x (1,H,W), "
                        "or (2,H,W) real/imag with --complex")
    q.add_argument("--n", "--samples", dest="n", type=int, required=True, help="number of images")
    q.add_argument("--size", type=int, nargs="+", default=[64], help="image size: N or H W (default 64)")
    q.add_argument("--out", required=True, help="output file (.h5); an unfinished FILE.partial is resumed")
    q.add_argument("--seed", type=int, default=0, help="image i is drawn from (seed, i) (default 0)")
    q.add_argument("--complex", action="store_true", help="complex images with a smooth random phase")
    q.add_argument("--families", nargs="+", default=None, help="families, used in turn (a name may repeat to weigh it): "
                   "ellipses shepp_logan polygons blobs (the default), the natural-image ones dead_leaves textures, and "
                   "photos (crops of scikit-image's sample photographs; needs scikit-image)")
    q.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(run=_generate_phantoms)


@ranks
def _generate_phantoms(args) -> int:
    from ..datasets.parts import generate_sharded
    from ..datasets.phantoms import PHANTOM_FAMILIES, generate_phantoms

    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    path = generate_sharded(args.out, generate_phantoms, args.n, size, seed=args.seed, complex=args.complex,
                             families=tuple(args.families or PHANTOM_FAMILIES), progress=not args.no_progress)
    print(f"wrote {path}")
    return 0


def _add_train_reconstruct(sub, tsub) -> None:
    tf = tsub.add_parser("diffusion", help="the score U-Net of the DDS/DPS diffusion prior, on images in an HDF5 file")
    tf.set_defaults(run=_train_diffusion)
    tf.add_argument("--data", required=True, help="krylon HDF5 data set of (N, H, W) images (square H = W)")
    tf.add_argument("--key", default=None, help="field holding the images (default: 'image', or the only field)")
    tf.add_argument("--complex", action="store_true", help="complex images as two channels (default: real)")
    tf.add_argument("--channels", type=int, default=16, help="U-Net channels at full resolution (default 16, as "
                    "the shipped prior)")
    tf.add_argument("--mults", type=int, nargs="+", default=[1, 2, 2, 4],
                    help="channel multiplier per level (default 1 2 2 4, as the shipped prior)")
    tf.add_argument("--no-attention", dest="attention", action="store_false")
    tf.add_argument("--init", default=None, help="fine-tune this prior: a prior.pt of 'krylon train diffusion' or a "
                    "shipped prior's name (phantom64); its architecture is used (--channels/--mults/--complex left at their "
                    "defaults, or matching it)")
    tf.add_argument("--ema", type=float, default=0.995, help="EMA decay of the exported weights (default 0.995, "
                    "as the shipped prior)")
    tf.add_argument("--epochs", type=int, default=10)
    tf.add_argument("--batch", type=int, default=16)
    tf.add_argument("--lr", type=float, default=1e-3)
    tf.add_argument("--seed", type=int, default=0)
    tf.add_argument("--out", default="runs/diffusion", help="folder for checkpoints, loss curves and prior.pt")
    tf.add_argument("--threads", type=int, default=None)
    tf.add_argument("--device", default="cpu")
    tf.add_argument("--no-progress", action="store_true")
    r = sub.add_parser("reconstruct", help="simulate MRI/CT measurements of an image and reconstruct it with DDS "
                       "(shipped prior) and a classical baseline; saves a comparison PNG")
    rsub = r.add_subparsers(dest="modality")
    for name, what in (("mri", "4-coil Cartesian MRI (CG-SENSE baseline)"), ("ct", "parallel-beam CT (FBP baseline)")):
        q = rsub.add_parser(name, help=what)
        q.set_defaults(run=_reconstruct)
        q.add_argument("--image", required=True, help="a .png, .npy (2-D array) or krylon .h5 file (first image)")
        q.add_argument("--out", required=True, help="PNG to write (truth, baseline, DDS, error)")
        q.add_argument("--nfe", type=int, default=50, help="DDS network calls (default 50)")
        q.add_argument("--noise", type=float, default=0.0, help="measurement noise, relative to the data RMS "
                       "(MRI: on the sampled k-space; CT: on every sinogram bin)")
        q.add_argument("--lam", type=float, default=None, help="noisy data: DDS weighs the data by the known noise, "
                       "1 / (lam sigma^2) scaled at each step by its noise level (default: "
                       "krylon.solvers.diffusion.DDS_SETTINGS, by modality)")
        q.add_argument("--gamma", type=float, default=None, help="noisy data: a fixed DDS data weight instead of the "
                       "noise's, scaled at each step by its noise level (the noise level is then not used)")
        q.add_argument("--cg-steps", type=int, nargs="+", default=None, metavar="N",
                       help="DDS's CG iterations per step: one count, or FIRST LAST of a ramp over the steps (default: "
                       "krylon.solvers.diffusion.DDS_SETTINGS, by modality and noise)")
        q.add_argument("--denoise-below", type=int, default=None, metavar="T",
                       help="DDS's steps into timesteps below T add no fresh noise (0: sample to the end; default: "
                       "krylon.solvers.diffusion.DDS_SETTINGS, by modality and noise)")
        q.add_argument("--final-weight", type=float, default=None, metavar="F",
                       help="noisy data: DDS's last data-consistency step weighs the data F times its scheduled "
                       "weight (default: krylon.solvers.diffusion.DDS_SETTINGS, by modality)")
        q.add_argument("--no-dihedral", action="store_true",
                       help="DDS shows the network the image as it is at every step (the paper's sampler), not turned "
                       "and mirrored by another symmetry of the square each step")
        q.add_argument("--seed", type=int, default=0, help="seeds the simulation: mask and measurement noise")
        q.add_argument("--sampler-seed", type=int, default=0, help="seeds the DDS sampler (default 0)")
        q.add_argument("--model", default=None, help="a prior.pt from 'krylon train diffusion' (default: shipped)")
        q.add_argument("--threads", type=int, default=None)
        if name == "mri":
            q.add_argument("--prior", default="magnitude", choices=("magnitude", "complex"),
                           help="shipped prior: magnitude (real images; every method over real images) or complex "
                           "(complex images, no real constraint)")
            q.add_argument("--acceleration", type=float, default=4.0)
            q.add_argument("--mask", default="uniform1d", choices=("uniform1d", "gaussian1d", "gaussian2d", "equispaced"))
            q.add_argument("--coils", type=int, default=4)
        else:
            q.add_argument("--views", type=int, default=30, help="projection angles")
            q.add_argument("--arc", type=float, default=180.0, help="angular range in degrees (120: limited angle)")


@ranks
def _train_diffusion(args) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from ..datasets import open_dataset
    from ..kernels import backend
    from ..solvers.diffusion import train_prior
    from ..solvers.training import TrainConfig

    ds = open_dataset(args.data)
    device = backend.resolve_device(args.device) or torch.device("cpu")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed, val_fraction=0.05)
    init = None
    if args.init is not None:
        from ..operators.learned import registry
        from ..operators.learned.unet import ScoreUNet

        init = (registry.load_checkpoint(args.init, expect=ScoreUNet) if Path(args.init).exists()
                else registry.load_pretrained("diffusion", args.init))
    t0 = time.perf_counter()
    net = train_prior(ds, args.out, cfg, key=args.key, complex_images=args.complex, channels=args.channels,
                      mults=args.mults, attention=args.attention, ema_decay=args.ema, device=device,
                      init=init, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    if not main_rank():  # under torchrun: rank 0 writes the record
        return 0
    out = Path(args.out)
    history = json.loads((out / "history.json").read_text())
    n_par = sum(p.numel() for p in net.parameters())
    record = {"command": command_line(), "data": str(args.data), "samples": len(ds),
              "network": net.config, "parameters": n_par, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
              "ema": args.ema, "seed": args.seed, "init": args.init, "final_train_loss": history["train"][-1],
              "final_val_loss": history["val"][-1] if history["val"] else None,
              "train_seconds_this_run": round(seconds, 1), "device": str(device), "ranks": torchrun_world(), "threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"exported {out / 'prior.pt'} ({n_par} parameters); record in {out / 'training.json'}")
    return 0


def _read_image(path: str, n: int):
    """A 2-D image from ..png/.npy/.h5 as float64 in [0, 1] (magnitude), resized to n x n when it is not."""
    from pathlib import Path

    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no image at {p}")
    if p.suffix.lower() == ".npy":
        a = np.load(p, allow_pickle=False)
    elif p.suffix.lower() in (".h5", ".hdf5"):
        from ..datasets import open_dataset

        ds = open_dataset(p)
        a = ds[0][ds.keys[0]].numpy()
    elif p.suffix.lower() == ".png":
        import matplotlib.image as mpimg

        a = mpimg.imread(p)
    else:
        raise ValueError(f"--image must be .png, .npy or .h5, got {p.name}")
    a = np.abs(np.asarray(a)).astype(np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 2):  # (1|2, H, W) channels: magnitude
        a = np.sqrt((a ** 2).sum(0))
    elif a.ndim == 3:  # colour PNG: luminance
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])
    if a.ndim != 2 or min(a.shape) < 2:
        raise ValueError(f"{p.name}: expected a 2-D image, got shape {a.shape}")
    x = torch.from_numpy(a)
    if tuple(x.shape) != (n, n):
        print(f"note: {p.name} is {x.shape[0]}x{x.shape[1]}; resized to the prior's {n}x{n}")
        x = torch.nn.functional.interpolate(x[None, None], size=(n, n), mode="bilinear", antialias=True)[0, 0]
    if not bool(torch.isfinite(x).all()) or float(x.max()) <= 0:
        raise ValueError(f"{p.name}: the image has non-finite values or no positive value")
    return (x.clamp(min=0) / x.max()).float()


def _reconstruct(args) -> int:
    import math

    import torch

    from ..operators import MRI, Radon
    from ..operators.imaging import add_noise, coil_maps, mri_mask, noise_std
    from ..solvers.diffusion import DDS
    from ..solvers.metrics import psnr, save_comparison, ssim
    from ..solvers.reconstruction import cg_sense, fbp

    if args.modality is None:
        raise SystemExit("krylon: reconstruct needs a modality: mri or ct")
    # one count, or a (first, last) ramp: DDS checks the pair
    cg_steps = args.cg_steps if args.cg_steps is None or len(args.cg_steps) > 1 else args.cg_steps[0]
    dds = DDS.load(args.model) if args.model else DDS.pretrained(kind=getattr(args, "prior", "magnitude"))
    n = dds.image_size
    x = _read_image(args.image, n)
    if args.modality == "mri":
        A = MRI(mri_mask((n, n), kind=args.mask, acceleration=args.acceleration, seed=args.seed),
                coil_maps((n, n), n_coils=args.coils))
        y = A.matvec(x.to(torch.complex64))
        what = f"MRI x{args.acceleration:g} {args.mask}, {args.coils} coils"
    else:
        if args.views < 1 or not 0 < args.arc <= 180:
            raise ValueError(f"--views must be >= 1 and --arc in (0, 180], got {args.views}, {args.arc}")
        angles = torch.arange(args.views, dtype=torch.float64) * math.radians(args.arc) / args.views
        A = Radon((n, n), angles=angles)
        y = A.matvec(x)
        what = f"CT {args.views} views over {args.arc:g} degrees"
    sd = None
    if args.noise:
        # on the measured entries: MRI the sampled k-space, CT every sinogram bin (rays missing the object too)
        sd = float(noise_std(y, args.noise, support=A.measured))
        y = add_noise(y, args.noise, generator=torch.Generator().manual_seed(args.seed + 1), support=A.measured)
    from ..solvers.diffusion import dds_settings

    # eta, CG steps, spacing, tail and gamma chosen on held-out phantoms, apart for noisy and noiseless data
    dds = DDS(dds.model, **dds_settings(args.modality, bool(args.noise), kind="complex" if dds.complex_images else
                                        "magnitude", gamma=args.gamma if args.noise else None, cg_steps=cg_steps,
                                        denoise_below=args.denoise_below, final_weight=args.final_weight,
                                        lam=args.lam, dihedral=False if args.no_dihedral else None))
    real = not dds.complex_images  # the baseline gets DDS's constraint: real images for a real prior
    base_name, base = ("CG-SENSE", cg_sense(A, y, lam=1e-2, real=real)) if args.modality == "mri" else \
        ("FBP", fbp(A, y, arc=math.radians(args.arc) if args.arc < 180 else None))
    # the weight from the known noise (lam), unless --gamma fixes it or the settings have no lam
    weigh = args.gamma is None and dds.lam is not None
    res = dds.solve(A, y, nfe=args.nfe, seed=args.sampler_seed, noise_std=sd if weigh else None, progress=True)
    rows = [(base_name, base), (f"DDS {res.nfe} NFE", res.x)]
    print(f"{what}, noise {args.noise:g}, {n}x{n}:")
    for name, r in rows:
        print(f"  {name:14s} PSNR {float(psnr(r, x)):6.2f} dB  SSIM {float(ssim(r, x)):.4f}")
    print(f"  DDS time {res.seconds:.2f} s")
    save_comparison(args.out, x, dict(rows), error="|DDS - truth|", title=what, panel_width=2.5)
    print(f"wrote {args.out}")
    return 0
