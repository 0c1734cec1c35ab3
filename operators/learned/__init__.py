"""Learned operators (neural networks as plain ``nn.Module``s); small pretrained weights live in ``weights/``.

Spectral neural operators: :class:`FNO` (neuraloperator's network, its mode convention, imported lazily) and
:class:`SFNO` (krylon's spatiotemporal FNO on :mod:`torch.fft`, built from :class:`SpectralConv`); :class:`SpectralBias`, the
zero-initialised additive spectral correction Spectral-Refiner fits.  :class:`RFFMLP`: an MLP
with a random-Fourier-feature input layer (MEDIDA-QG's sparse-sensor interpolation).
"""

from .fno import FNO
from .rff import RFFMLP
from .sfno import SFNO
from .spectral import SpectralBias, SpectralConv

__all__ = ["FNO", "RFFMLP", "SFNO", "SpectralBias", "SpectralConv"]
