"""``krylon train dcdm``: training data (Lanczos/Ritz right-hand sides on obstacle scenes) and the DCDM network."""

from __future__ import annotations

from ._common import command_line, main_rank, ranks, torchrun_world


def register(cmd) -> None:
    tsub = cmd.train
    td = tsub.add_parser("dcdm", help="the DCDM direction network on random obstacle scenes")
    td.set_defaults(run=_train_dcdm)
    td.add_argument("--dim", type=int, default=2, choices=(2, 3))
    td.add_argument("--grid", type=int, default=None, help="training grid size per axis (default 64 in 2-D, 24 in 3-D)")
    td.add_argument("--geometries", type=int, default=64, help="random scenes")
    td.add_argument("--rhs", type=int, default=16, help="right-hand sides per scene")
    td.add_argument("--lanczos", type=int, default=200, help="Lanczos vectors per scene")
    td.add_argument("--white", type=float, default=0.25,
                    help="fraction of right-hand sides that are white noise instead of Ritz combinations "
                         "(default 0.25; 0 with --smooth 0 = the paper's data)")
    td.add_argument("--smooth", type=float, default=0.5,
                    help="fraction of right-hand sides that are random smooth fields (power-law spectra, some "
                         "with a constant offset) instead of Ritz combinations (default 0.5)")
    td.add_argument("--init", default=None,
                    help="start from the weights of this DCDM model (a dcdm.pt of the same network configuration): "
                         "fine-tuning on new data")
    td.add_argument("--levels", default="3", help="U-Net pooling levels (default 3): 1 = the paper's network; "
                    "'auto' = weight-shared levels down to --coarsest cells per axis")
    td.add_argument("--coarsest", type=int, default=8, help="coarsest grid size per axis for --levels auto")
    td.add_argument("--width", type=int, default=16, help="channels (16 in the paper)")
    td.add_argument("--no-odd", dest="odd", action="store_false",
                    help="the paper's network (not antisymmetrised in the residual; see DCDMNet's odd=)")
    td.add_argument("--epochs", type=int, default=10)
    td.add_argument("--batch", type=int, default=16)
    td.add_argument("--lr", type=float, default=1e-3)
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--out", default="runs/dcdm", help="folder for data, checkpoints, loss curves and the exported model")
    td.add_argument("--threads", type=int, default=None)
    td.add_argument("--device", default="cpu")
    td.add_argument("--no-progress", action="store_true")


@ranks
def _train_dcdm(args) -> int:
    import json
    import time

    import torch

    from ..datasets import dcdm as dcdm_data
    from ..datasets import open_dataset
    from ..datasets.parts import generate_sharded
    from ..kernels import backend
    from ..operators.learned.dcdm import DCDMNet
    from ..solvers.dcdm import DCDM, dcdm_loss
    from ..solvers.training import TrainConfig, train

    n = args.grid or (64 if args.dim == 2 else 24)
    if n < 4:
        raise SystemExit(f"krylon: --grid must be >= 4, got {n}")
    shape = (n,) * args.dim
    out = __import__("pathlib").Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.h5"
    t0 = time.perf_counter()
    if not data.exists():
        print(f"generating {args.geometries} scenes x {args.rhs} right-hand sides on a {shape} grid -> {data}")
        generate_sharded(data, dcdm_data.generate, shape=shape, n_geometries=args.geometries, rhs_per_geometry=args.rhs,
                           lanczos=args.lanczos, seed=args.seed, white_fraction=args.white,
                           smooth_fraction=args.smooth,
                           progress=not args.no_progress)
    t_data = time.perf_counter() - t0
    ds = open_dataset(data)
    device = backend.resolve_device(args.device) or torch.device("cpu")
    torch.manual_seed(args.seed)
    levels = args.levels if args.levels == "auto" else int(args.levels)
    net = DCDMNet(dim=args.dim, in_channels=3, width=args.width, levels=levels, coarsest=args.coarsest,
                  odd=args.odd).to(device)
    if args.init and not (out / "checkpoint.pt").exists():  # a resumed run continues from its own checkpoint
        init = DCDM.load(args.init).model
        if init.config != net.config:
            raise SystemExit(f"krylon: --init model {args.init} has network {init.config}, this run builds {net.config}")
        net.load_state_dict(init.state_dict())
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed)
    t1 = time.perf_counter()
    history = train(net, dcdm_loss, ds, out, cfg, progress=not args.no_progress, name=f"dcdm{args.dim}d")
    t_train = time.perf_counter() - t1
    if not main_rank():  # under torchrun: rank 0 exports and writes the record
        return 0
    net.eval()
    solver = DCDM(net.cpu())
    solver.save(out / "dcdm.pt")
    record = {"command": command_line(), "grid": list(shape), "geometries": args.geometries,
              "rhs_per_geometry": args.rhs, "lanczos": args.lanczos, "white_fraction": args.white,
              "smooth_fraction": args.smooth, "init": args.init, "network": net.config, "epochs": args.epochs, "batch": args.batch,
              "lr": args.lr, "seed": args.seed, "parameters": net.n_parameters, "final_train_loss": history["train"][-1],
              "final_val_loss": history["val"][-1] if history["val"] else None, "data_seconds": round(t_data, 1),
              "train_seconds": round(t_train, 1), "device": str(device), "ranks": torchrun_world(), "threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    print(f"exported {out / 'dcdm.pt'} ({net.n_parameters} parameters); record in {out / 'training.json'}")
    return 0
