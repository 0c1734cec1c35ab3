"""Size presets of the data-set generators, torch-free so the command line can show them in its help.

``NS2D``: the Spectral-Refiner recipe (``paper``: 256^2 simulation, dt 1e-3, 30 time units of warm-up, snapshots
0.2 apart, stored at 64^2) and a small one that runs on a laptop CPU in minutes (``quick``: simulated and stored
at 64^2, dt 1e-2, 10 time units of warm-up).
"""

NS2D = {
    "paper": {"resolution": 64, "sim_resolution": 256, "dt": 1e-3, "warmup": 30.0, "interval": 0.2},
    "quick": {"resolution": 64, "sim_resolution": 64, "dt": 1e-2, "warmup": 10.0, "interval": 0.2},
}
