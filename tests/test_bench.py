"""The ``krylon bench`` summary: rows built from synthetic suite results, the runner, and the command on tiny sizes."""

import json
import os
import types

import pytest
import torch

from krylon.bench import SUITES, load
from krylon.bench import summary as S


def test_ratio_direction_says_krylon_better_above_one():
    r = S.compare("f", "p", "time (s)", [("mine", 1.0)], [("peer", 3.0)])
    assert r["ratio"] == pytest.approx(3.0) and r["ratio_is"] == "peer/krylon" and r["status"] == "ok"
    r = S.compare("f", "p", "time (s)", [("mine", 4.0)], [("peer", 1.0)])
    assert r["ratio"] == pytest.approx(0.25)  # a loss stays in the table
    r = S.compare("f", "p", "throughput", [("mine", 6.0)], [("peer", 2.0)], better="higher")
    assert r["ratio"] == pytest.approx(3.0) and r["ratio_is"] == "krylon/peer"
    with pytest.raises(ValueError, match="better"):
        S.compare("f", "p", "m", [], [], better="faster")


def test_best_entries_are_chosen_and_failures_never_win():
    r = S.compare("f", "p", "time (s)", [("a", 2.0), ("b", None), ("c", 1.5)],
                  [("slow", 9.0), ("failed", None), ("fast", 3.0), ("nan", float("nan"))])
    assert (r["krylon"], r["krylon_value"], r["peer"], r["peer_value"]) == ("c", 1.5, "fast", 3.0)
    r = S.compare("f", "p", "time (s)", [("a", None), ("b", None)], [("peer", 1.0)])
    assert r["ratio"] is None and r["status"] == "krylon: not converged" and r["krylon"] == "a"
    r = S.compare("f", "p", "time (s)", [("a", 1.0)], [])
    assert r["ratio"] is None and r["status"] == "no peer"
    r = S.compare("f", "p", "time (s)", [("a", 1.0)], [("peer", None)])
    assert r["status"] == "peer: not converged"


def _krylov_result():
    def row(solver, it, t, setup=0.0, conv=True):
        return {"solver": solver, "iterations": it, "time_s": t, "setup_s": setup, "time_per_iter_ms": 1e3 * t / it,
                "converged": conv}

    rows = [row("krylon CG (matrix-free)", 100, 0.1), row("krylon CG (eager, KRYLON_NUMBA=0)", 100, 0.15),
            row("krylon PCG-IC0 (1 run)", 30, 0.5, 0.2), row("krylon PCG-DST (spectral)", 1, 0.01, conv=False),
            row("scipy cg (CSR, CPU)", 100, 0.3), row("pyamg SA-PCG (CPU)", 8, 0.05, 0.4)]
    return {"rtol": 1e-8, "cases": [{"case": "poisson2d 64x64 float64", "rows": rows}],
            "batched": [{"grid": "16x16", "rhs": 16, "batched_s": 0.1, "sequential_s": 0.5, "all_converged": True}]}


def test_krylov_summary_rows():
    per_iter, to_tol, batched = load("krylov").summary(_krylov_result())
    assert (per_iter["krylon"], per_iter["peer"]) == ("krylon CG (matrix-free)", "scipy cg (CSR, CPU)")
    assert per_iter["ratio"] == pytest.approx(3.0)
    # setup counts: pyamg (0.05 + 0.4 s) loses to scipy cg (0.3 s); the unconverged DST row never wins
    assert (to_tol["krylon"], to_tol["peer"]) == ("krylon CG (matrix-free)", "scipy cg (CSR, CPU)")
    assert "1e-08" in to_tol["metric"] and to_tol["ratio"] == pytest.approx(3.0)
    assert batched["ratio"] == pytest.approx(5.0) and batched["problem"].startswith("poisson2d 16x16")


def _dcdm_result():
    def row(grid, rtol, solver, it, t, status="converged"):
        ok = status == "converged"
        return {"grid": grid, "rtol": rtol, "solver": solver, "iterations": it if ok or status != "skipped" else None,
                "time_s": t, "converged": ok, "status": status}

    rows = []
    for rtol in (1e-4, 1e-6):
        rows += [row("64x64", rtol, "DCDM", 10, 0.3), row("64x64", rtol, "DCDM+r", 6, 0.4),
                 row("64x64", rtol, "CG", 140, 0.04), row("64x64", rtol, "DST-PCG", 10, 0.01),
                 row("64x64", rtol, "pyamg-PCG", 7, 0.02),
                 row("32x32x32", rtol, "DCDM", 100, 3.0, "maxiter"), row("32x32x32", rtol, "DCDM+r", None, None, "skipped"),
                 row("32x32x32", rtol, "CG", 70, 0.05)]
    return {"rows": rows}


def test_dcdm_summary_learned_vs_best_classical_and_losses_shown():
    its, wall, its3, wall3 = load("dcdm").summary(_dcdm_result())
    assert its["metric"] == "iterations to 1e-04" and its["problem"] == "poisson2d 64x64, obstacles"
    assert (its["krylon"], its["peer"], its["ratio"]) == ("DCDM+r", "pyamg-PCG", pytest.approx(7 / 6))
    assert (wall["krylon"], wall["peer"]) == ("DCDM", "DST-PCG") and wall["ratio"] == pytest.approx(0.01 / 0.3)
    assert its3["problem"].startswith("poisson3d") and its3["status"] == "krylon: not converged"
    assert wall3["ratio"] is None and wall3["peer"] == "CG"
    assert load("dcdm").summary({"rows": []}) == []


def test_summary_table_and_plot_with_failed_and_skipped_suites(tmp_path, capsys):
    rows = load("dcdm").summary(_dcdm_result()) + [S.unavailable("fno", "error: RuntimeError: boom"),
                                                    S.unavailable("dds", "skipped: missing h5py")]
    text = S.print_summary(rows)
    assert "krylon better" in text and "error: RuntimeError: boom" in text and "skipped: missing h5py" in text
    assert "0.0333x" in text and "krylon: not converged" in text
    S.plot_summary(rows, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_run_suites_isolates_failures_and_passes_declared_options(tmp_path, monkeypatch, capsys):
    seen = {}

    def run_ok(size, *, device="cpu", out="x", peers=True):
        seen.update(size=size, device=device, peers=peers)
        return {"value": 2.0}

    def run_broken(size, *, device="cpu", out="x"):
        raise RuntimeError("boom")

    def run_missing(size, **kwargs):
        raise ModuleNotFoundError("No module named 'pyamg'", name="pyamg")

    fakes = {"ok": types.SimpleNamespace(run=run_ok, summary=lambda r: [S.compare("ok", "p", "m", [("k", 1.0)],
                                                                                    [("p", r["value"])])]),
             "broken": types.SimpleNamespace(run=run_broken, summary=None),
             "missing": types.SimpleNamespace(run=run_missing, summary=None)}
    monkeypatch.setattr(S, "load", fakes.__getitem__)
    rec = S.run_suites(["ok", "broken", "missing"], "quick", out=tmp_path, options={"peers": False, "repeats": 5,
                       "models": None}, command="krylon bench", plot=False)
    assert seen == {"size": "quick", "device": "cpu", "peers": False}  # repeats not declared: not passed
    assert not rec["ok"] and [r["status"] for r in rec["rows"]] == ["ok", "error: RuntimeError: boom",
                                                                    "skipped: missing pyamg"]
    assert rec["suites"]["missing"]["status"] == "skipped" and rec["suites"]["broken"]["status"] == "error"
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["command"] == "krylon bench" and data["rows"][0]["ratio"] == 2.0 and "cpu" in data["machine"]
    assert "summary" in capsys.readouterr().out
    with pytest.raises(RuntimeError):
        S.run_suites(["broken"], "quick", out=tmp_path, isolate=False, write=False)


def test_registry_modules_provide_run_summary_and_sizes():
    for name in SUITES:
        module = load(name)
        assert callable(module.run) and callable(module.summary) and {"quick", "default", "paper"} <= set(module.SIZES)
    with pytest.raises(ValueError, match="registered"):
        load("nope")


@pytest.fixture
def restore_threads():
    import torch

    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_krylon_bench_without_a_suite_runs_all_and_writes_the_summary(tmp_path, monkeypatch, capsys, restore_threads):
    from krylon import cli

    monkeypatch.setitem(load("krylov").SIZES, "quick", {"cases": [(16, 16)], "batched": [(8, 8)], "gpu_extra": []})
    monkeypatch.setitem(load("dcdm").SIZES, "quick", {2: [16], 3: []})
    monkeypatch.setitem(load("fno").SIZES, "quick", {"darcy": {"n_train": 16, "epochs": 1, "batch": 8}, "ns": None})
    monkeypatch.setitem(load("medida").SIZES, "quick", {"n": 64, "length": 22.0, "samples": 2, "spacing": 1.0, "spinup": 20.0,
                                                        "transit_dt": 1e-2, "noisy": [], "plot_time": 1.0})
    monkeypatch.setattr(load("medida"), "CASES", load("medida").CASES[:2])
    monkeypatch.setitem(load("dds").SIZES, "quick", {"images": 0, "tasks": ("ct-8views",), "dds_nfe": (2,),
                                                     "dps_nfe": 2, "dps_tasks": ("ct-8views",)})
    from krylon.bench import medida_qg  # the QG cases run inside the medida suite

    monkeypatch.setitem(medida_qg.SIZES, "quick", {"shape": (32, 16), "nu": 5e-3, "spinup": 10.0, "samples": 1, "members": 2,
                                                   "spacing": 1.0, "cases": ["tau_f"], "interp": ["cubic"], "rff": {}})
    assert cli.main(["bench", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== summary: krylov, dcdm, fno, dds, medida at --size quick" in out
    data = json.loads((tmp_path / "summary.json").read_text())
    assert set(data["suites"]) == set(SUITES) and all(s["status"] == "ok" for s in data["suites"].values())
    assert data["command"].startswith("krylon bench all --size quick") and data["machine"]["torch_threads"] == 1
    # the fno suite compares only when neuraloperator's Darcy files are found (shared/data/neuralop)
    # (without them its rows say why it has no comparison)
    families = {r["family"] for r in data["rows"]}
    assert {"krylov", "dcdm", "medida", "dds"} <= families <= {"krylov", "dcdm", "medida", "dds", "fno"}
    assert "fno" in families or not load("fno").find_data_dir()
    assert (tmp_path / "summary.png").stat().st_size > 1000
    assert (tmp_path / "krylov.json").exists() and (tmp_path / "dcdm.json").exists()
    assert any(r["problem"].startswith("QG tau_f") for r in data["rows"]) and (tmp_path / "medida_qg.json").exists()


def test_only_a_missing_optional_package_counts_as_skipped():
    """A suite whose optional peer is absent is skipped; a broken core import (scipy, torch, krylon) is an error."""
    assert S._missing_dependency(ModuleNotFoundError("No module named 'pyamg'", name="pyamg"))
    for name in ("scipy", "scipy.sparse", "torch", "krylon.solvers.cg"):
        assert not S._missing_dependency(ModuleNotFoundError(f"No module named {name!r}", name=name))
    assert not S._missing_dependency(ImportError("cannot import name 'x'"))


def test_dds_settings_are_chosen_apart_for_noisy_data():
    from krylon.bench import dds

    for m in ("mri", "ct"):
        clean, noisy = dds.dds_settings(m, False), dds.dds_settings(m, True)
        assert clean["gamma"] is None and noisy["gamma"] > 0  # noiseless: exact consistency; noisy: a data weight
        assert set(clean) == set(noisy) == set(dds.SETTING_NAMES)
    assert dds.dds_settings("ct", True, eta=0.9, cg_steps=None) == {**dds.DDS_SETTINGS["ct", True], "eta": 0.9}
    with pytest.raises(ValueError, match="'pet'"):
        dds.dds_settings("pet", True)
    # the complex prior has its own (MRI only)
    assert dds.dds_settings("mri", False, kind="complex") == dds.COMPLEX_SETTINGS["mri", False]
    with pytest.raises(ValueError, match="complex prior"):
        dds.dds_settings("ct", False, kind="complex")
    with pytest.raises(ValueError, match="kind"):
        dds.dds_settings("mri", False, kind="phase")
    with pytest.raises(TypeError, match="sigma"):
        dds.dds_settings("mri", True, sigma=1.0)


def test_dds_bench_runs_only_the_noisy_or_noiseless_cases(tmp_path, monkeypatch, restore_threads):
    from krylon.bench import dds

    monkeypatch.setitem(dds.SIZES, "quick", {"images": 0, "tasks": ("ct-8views",), "dds_nfe": (2,), "dps_nfe": 2,
                                             "dps_tasks": ("ct-8views",), "dps_noisy": True})
    monkeypatch.setitem(dds.DDS_SETTINGS, ("ct", True), {"eta": 0.7, "cg_steps": 2, "gamma": 0.05, "lam": 0.4})
    monkeypatch.setattr(dds, "TV_LAMS", dds.TV_LAMS[:1])
    res = dds.run("quick", out=tmp_path, plot=False, noisy=True)
    assert {r["noise"] for r in res["rows"]} == {dds.NOISE}
    assert {r["method"] for r in res["rows"]} >= {"DDS-2", "DPS-2", "FBP"}
    ddsrow = next(r for r in res["rows"] if r["method"] == "DDS-2")
    # the noisy settings, not the noiseless ones; the weight from each image's noise (lam), not the fixed gamma
    assert ddsrow["note"] == "eta=0.7, cg_steps=2, lam=0.4"
    assert (tmp_path / "dds_quick_noisy.json").exists()
    res = dds.run("quick", out=tmp_path, plot=False, noisy=False, dps=False, tasks=("ct-8views",))
    assert {r["noise"] for r in res["rows"]} == {0.0}
    assert "gamma=None" in next(r for r in res["rows"] if r["method"] == "DDS-2")["note"]
    assert (tmp_path / "dds_quick_ct-8views_noiseless.json").exists()
    with pytest.raises(ValueError, match="noisy"):
        dds.run("quick", out=tmp_path, plot=False, noisy="yes")
    # the same split from the command line
    from krylon.cli import main

    assert main(["bench", "dds", "--size", "quick", "--cases", "noiseless", "--task", "ct-8views", "--no-plot",
                 "--sampler-seeds", "2", "5", "--out", str(tmp_path / "cli")]) == 0
    with open(tmp_path / "cli" / "dds_quick_ct-8views_noiseless.json") as f:
        assert json.load(f)["sampler_seeds"] == [2, 5]


def test_dds_bench_seeds_each_image_by_name_and_averages_sampler_seeds(tmp_path, monkeypatch, restore_threads):
    from krylon.bench import dds

    quick = {"images": 1, "tasks": ("ct-8views",), "dds_nfe": (3,), "dps_nfe": 3, "dps_tasks": ("ct-8views",)}
    monkeypatch.setitem(dds.SIZES, "quick", quick)
    monkeypatch.setattr(dds, "TV_LAMS", dds.TV_LAMS[:1])
    monkeypatch.setattr(dds, "CG_LAMS", dds.CG_LAMS[:1])

    def per_image(res, method):
        return next(r for r in res["rows"] if r["method"] == method)

    both = dds.run("quick", out=tmp_path, plot=False, noisy=False, sampler_seeds=(0, 1))
    one = dds.run("quick", out=tmp_path, plot=False, noisy=False, sampler_seeds=(1,))
    monkeypatch.setitem(dds.SIZES, "quick", {**quick, "images": 2})  # one more test image before Shepp-Logan
    more = dds.run("quick", out=tmp_path, plot=False, noisy=False, sampler_seeds=(1,))
    for method in ("DDS-3", "DPS-3"):
        row = per_image(both, method)
        seeds = row["psnr_per_seed"]
        assert set(seeds) == set(both["images"]) and all(len(v) == 2 for v in seeds.values())
        for name, (p0, p1) in seeds.items():
            assert row["psnr_per_image"][name] == pytest.approx((p0 + p1) / 2, abs=2e-3)
            assert p1 == pytest.approx(per_image(one, method)["psnr_per_image"][name], abs=1e-3)
            # an image's stream follows its name: another test image in the set moves nothing
            assert per_image(more, method)["psnr_per_image"][name] == pytest.approx(p1, abs=1e-3)
        assert "psnr_per_seed" not in per_image(one, method)
    assert both["sampler_seeds"] == [0, 1] and "psnr_per_seed" not in per_image(both, "FBP")
    assert dds.image_seeds(["a", "b"], 0) != dds.image_seeds(["a", "b"], 1)
    assert dds.image_seeds(["b"], 3) == dds.image_seeds(["a", "b"], 3)[1:]
    with pytest.raises(ValueError, match="sampler_seeds"):
        dds.run("quick", out=tmp_path, plot=False, sampler_seeds=())


def test_dds_bench_runs_on_images_unlike_the_training_set(tmp_path, monkeypatch, restore_threads):
    pytest.importorskip("skimage")
    from krylon.bench import dds

    monkeypatch.setitem(dds.SIZES, "quick", {"images": 1, "tasks": ("ct-8views",), "dds_nfe": (2,), "dps_nfe": 2,
                                             "dps_tasks": (), "complex": True})
    monkeypatch.setattr(dds, "TV_LAMS", dds.TV_LAMS[:1])
    res = dds.run("quick", out=tmp_path, plot=False, noisy=False, images="unlike")
    assert res["images"] == ["camera (unlike)", "coins (unlike)"] and res["image_set"] == "unlike"
    assert res["complex"].startswith("skipped") and (tmp_path / "dds_quick_noiseless_unlike.json").exists()
    fbp = next(r for r in res["rows"] if r["method"] == "FBP")
    assert set(fbp["psnr_per_image"]) == set(res["images"]) and "psnr_unseen" not in fbp
    # the summary compares the set's mean PSNR (there are no unseen phantoms to average)
    mean = [r for r in dds.summary(res) if r["metric"] == "PSNR dB mean"]
    assert mean and mean[0]["krylon_value"] == pytest.approx(next(r["psnr"] for r in res["rows"] if r["method"] == "DDS-2"))
    x, _ = dds._skimage_images("unlike", torch.float64)
    assert x.shape == (2, 64, 64) and float(x.amin()) == 0.0 and float(x.amax()) == 1.0
    # the held-out photographs: grey (colour ones converted), none of them a test image
    x, names = dds._skimage_images("natural", torch.float64)
    assert x.shape == (6, 64, 64) and names[0] == "astronaut (natural)" and not set(dds.NATURAL) & set(dds.UNLIKE)
    assert torch.allclose(x.flatten(1).amax(1), torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="images"):
        dds.run("quick", out=tmp_path, plot=False, images="photos")


def test_dds_tune_noisy_part_picks_the_best_of_the_joint_grid(tmp_path):
    from krylon.bench import dds

    grid = ({"eta": 0.5, "cg_steps": 1, "spacing": 3.0}, {"eta": 0.9, "cg_steps": (1, 3), "cg_power": 1.0, "spacing": 1.0})
    res = dds.tune(images=1, nfe=2, tasks=("ct-8views",), noisy_grid=grid, lams={"ct": (0.05, 3.0)}, cg_budget={},
                   parts=("noisy",), out=tmp_path, heldout=("phantoms",))
    rows = res["rows"]
    assert len(rows) == 4 and all(r["noise"] == dds.NOISE for r in rows)
    top = max(rows, key=lambda r: r["psnr"])
    keys = ("eta", "cg_steps", "cg_power", "spacing", "lam")
    assert res["choice"] == {"noisy": {"ct": {**{k: top[k] for k in keys if k in top}, "gamma_schedule": "snr"}}}
    # a CG budget leaves out the settings that need more steps (the ramp 1 -> 3 averages 2 at 2 NFE)
    res = dds.tune(images=1, nfe=2, tasks=("ct-8views",), noisy_grid=grid, lams={"ct": (0.3,)}, cg_budget={"ct": 1.5},
                   parts=("noisy",), heldout=("phantoms",))
    assert res["choice"]["noisy"]["ct"]["cg_steps"] == 1
    assert (tmp_path / "dds_tune.json").exists()


def test_dds_tune_scores_each_setting_summed_over_the_held_out_sets(monkeypatch):
    from krylon.bench import dds
    from krylon.solvers.metrics import psnr

    grid = ({"eta": 0.5, "cg_steps": 1, "spacing": 3.0}, {"eta": 1.0, "cg_steps": 2, "spacing": 1.0})
    res = dds.tune(images=1, nfe=2, tasks=("mri-x4-uniform1d",), dds_grid=grid, parts=("dds",), sampler_seeds=(0,))
    assert res["heldout"] == ["phantoms", "natural"]
    rows = res["rows"]
    assert sorted(r["set"] for r in rows) == ["natural", "natural", "phantoms", "phantoms"]
    total = {g["eta"]: sum(r["psnr"] for r in rows if r["eta"] == g["eta"]) for g in grid}
    assert res["choice"]["dds"]["mri"]["eta"] == max(total, key=total.get)
    # the natural rows score the photographs themselves: the zero image's PSNR on them is that set's
    x, _ = dds._skimage_images("natural", torch.float32)
    monkeypatch.setattr("krylon.solvers.diffusion.DDS.solve",
                        lambda self, A, y, **kw: type("R", (), {"x": torch.zeros(y.shape[0], 64, 64), "seconds": 0.0})())
    res = dds.tune(images=1, nfe=2, tasks=("ct-8views",), dds_grid=grid[:1], parts=("dds",), sampler_seeds=(0,))
    nat = next(r for r in res["rows"] if r["set"] == "natural")
    assert abs(nat["psnr"] - float(psnr(torch.zeros_like(x), x).mean())) < 1e-3
    with pytest.raises(ValueError, match="heldout"):
        dds.tune(images=1, nfe=2, parts=("dds",), heldout=("photos",))
    with pytest.raises(ValueError, match="complex"):
        dds.tune(images=1, nfe=2, parts=("dds",), kind="complex", heldout=("natural",))


def test_dds_tune_complex_prior_runs_the_mri_tasks_on_complex_phantoms():
    from krylon.bench import dds

    grid = ({"eta": 0.5, "cg_steps": 1}, {"eta": 1.0, "cg_steps": 1})
    res = dds.tune(images=1, nfe=2, tasks=None, dds_grid=grid, parts=("dds",), kind="complex")
    assert {r["task"] for r in res["rows"]} == {t for t in dds.TASKS if t.startswith("mri")}
    assert set(res["choice"]["dds"]) == {"mri"} and res["kind"] == "complex"


def test_dds_classical_weights_cover_every_case_from_the_grids():
    from krylon.bench import dds

    for task in dds.TASKS:
        for noisy in (False, True):
            for kind in ("real", "complex") if task.startswith("mri") else ("real",):
                lams = dds.classical_lams(task, noisy, kind)
                assert lams["cg"] in dds.CG_LAMS and lams["tv"] in dds.TV_LAMS, (task, noisy, kind)
    assert dds.classical_lams("ct-8views", False, "complex") is None
