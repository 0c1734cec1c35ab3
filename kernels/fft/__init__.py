"""FFT kernels: transforms, fast Poisson/Helmholtz solves and Sobolev norms on batched fields.

:mod:`.transforms` (wavenumbers, spectral derivatives, gradient and Laplacian, dealiasing, DST-I/DCT-II),
:mod:`.solves` (periodic FFT solve, Dirichlet DST solve, stencil eigenvalues, :func:`solve_stencil`) and
:mod:`.sobolev` (:func:`sobolev_norm`, :func:`sobolev_inner`).  Every public name is re-exported here, so
``from krylon.kernels import fft; fft.solve_dirichlet(...)`` works; only :mod:`torch.fft` is used, on any device.
"""

from .sobolev import sobolev_inner, sobolev_norm
from .solves import solve_dirichlet, solve_periodic, solve_stencil, stencil_eigenvalues
from .transforms import dct2, dealias, dealias_mask, derivative, dst1, gradient, idct2, idst1, laplacian_spectral, wavenumber_grid, wavenumbers

__all__ = ["wavenumbers", "wavenumber_grid", "derivative", "gradient", "laplacian_spectral", "dealias_mask", "dealias",
           "dst1", "idst1", "dct2", "idct2", "stencil_eigenvalues", "solve_stencil", "solve_dirichlet", "solve_periodic",
           "sobolev_norm", "sobolev_inner"]

# the public functions are documented (and doctested) as krylon.kernels.fft.<name>, where users call them
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
