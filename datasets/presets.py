"""Size presets of the data-set generators, torch-free so the command line can show them in its help.

``NS2D``: the Spectral-Refiner recipe (``paper``: 256^2 simulation, dt 1e-3, 30 time units of warm-up, snapshots
0.2 apart, stored at 64^2) and a small one that runs on a laptop CPU in minutes (``quick``: simulated and stored
at 64^2, dt 1e-2, 10 time units of warm-up).  At nu = 1e-3 the quick recipe loses little: for two of its initial
fields, 64^2 and 128^2 simulations agree to 3e-9 (relative L2 on the 64^2 modes) up to t = 40, and dt 1e-2 and
5e-3 to 2.4e-5 (CPU, float64; the script is in the no-gen session report).
"""

NS2D = {
    "paper": {"resolution": 64, "sim_resolution": 256, "dt": 1e-3, "warmup": 30.0, "interval": 0.2},
    "quick": {"resolution": 64, "sim_resolution": 64, "dt": 1e-2, "warmup": 10.0, "interval": 0.2},
}
