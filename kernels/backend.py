"""Device and dtype policy, and conversion between numpy / scipy / torch at the edges.

Everything inside krylon works on :class:`torch.Tensor`.  Inputs from numpy or
scipy are converted once, here, and numpy callers get numpy back through
:mod:`krylon.solvers.compat`.

Policy
------
* The dtype and device of a solve follow the right-hand side unless given.
* Integer or boolean right-hand sides are promoted to ``torch.float64`` (the
  same promotion scipy applies), never silently truncated.
* Complex dtypes are first-class: inner products conjugate their first argument.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

# torch marks sparse CSR as beta and warns on every construction; krylon uses only the stable parts
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)

__all__ = [
    "as_tensor",
    "to_numpy",
    "resolve_device",
    "real_dtype",
    "complex_dtype",
    "result_dtype",
    "is_floating",
    "eps",
    "scipy_sparse_to_torch",
]

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)


def resolve_device(device: Any = None) -> torch.device | None:
    """Turn ``"cuda"``, ``"cpu"``, ``torch.device`` or ``None`` into a ``torch.device``.

    ``"auto"`` picks CUDA when available.  A CUDA device asked for on a machine
    without one raises ``ValueError`` instead of failing later deep inside a kernel.
    """
    if device is None:
        return None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available on this machine")
    return dev


def is_floating(dtype: torch.dtype) -> bool:
    return dtype in _FLOATING


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype with the precision of ``dtype`` (complex128 -> float64)."""
    if dtype == torch.complex128:
        return torch.float64
    if dtype == torch.complex64:
        return torch.float32
    return dtype


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype with the precision of ``dtype`` (float32 -> complex64)."""
    if dtype in (torch.float64, torch.complex128):
        return torch.complex128
    return torch.complex64


def result_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Promote dtypes, mapping integers and booleans to float64."""
    out = None
    for d in dtypes:
        if d is None:
            continue
        if not is_floating(d):
            d = torch.float64
        out = d if out is None else torch.promote_types(out, d)
    return torch.float64 if out is None else out


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the real part of ``dtype``."""
    return torch.finfo(real_dtype(dtype)).eps


def _parse_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "")
        aliases = {"double": "float64", "float": "float32", "single": "float32", "half": "float16", "cdouble": "complex128", "cfloat": "complex64"}
        name = aliases.get(name, name)
        if not hasattr(torch, name) or not isinstance(getattr(torch, name), torch.dtype):
            raise TypeError(f"unknown dtype {dtype!r}")
        return getattr(torch, name)
    try:
        return torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype
    except TypeError as exc:  # pragma: no cover - numpy says what is wrong
        raise TypeError(f"unknown dtype {dtype!r}") from exc


def as_tensor(x: Any, dtype: Any = None, device: Any = None, *, name: str = "input", promote: bool = True) -> torch.Tensor:
    """Convert ``x`` (tensor, numpy array, scalar, sequence) to a torch tensor.

    Parameters
    ----------
    x : tensor, array_like
    dtype, device : optional
        Target dtype (``torch.dtype``, numpy dtype or string) and device.
    name : str
        Used in error messages.
    promote : bool
        Promote integer/boolean data to float64.

    Examples
    --------
    >>> import numpy as np
    >>> as_tensor(np.arange(3)).dtype
    torch.float64
    """
    dtype = _parse_dtype(dtype)
    device = resolve_device(device)
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"{name}: cannot convert an object array to a tensor")
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        t = torch.from_numpy(np.ascontiguousarray(arr))
    elif hasattr(x, "toarray") and hasattr(x, "nnz"):
        raise TypeError(f"{name}: a scipy sparse matrix is an operator, not a field; use aslinearoperator()")
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:
            raise TypeError(f"{name}: cannot convert object of type {type(x).__name__} to a tensor") from exc
    if dtype is None and promote and not is_floating(t.dtype):
        dtype = torch.float64
    if dtype is not None or device is not None:
        t = t.to(device=device if device is not None else t.device, dtype=dtype if dtype is not None else t.dtype)
    return t


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detach, move to the CPU and return a numpy array (a copy when needed)."""
    return t.detach().resolve_conj().cpu().numpy()



def scipy_sparse_to_torch(A: Any, dtype: Any = None, device: Any = None, layout: str = "csr") -> torch.Tensor:
    """Convert a scipy sparse matrix/array to a torch sparse CSR (or COO) tensor."""
    import scipy.sparse as sp

    if not sp.issparse(A):
        raise TypeError(f"expected a scipy sparse matrix, got {type(A).__name__}")
    dtype = _parse_dtype(dtype)
    if layout == "csr":
        A = sp.csr_array(A)
        A.sum_duplicates()
        data = torch.from_numpy(np.ascontiguousarray(A.data))
        if dtype is None and not is_floating(data.dtype):
            dtype = torch.float64
        t = torch.sparse_csr_tensor(
            torch.from_numpy(A.indptr.astype(np.int64)),
            torch.from_numpy(A.indices.astype(np.int64)),
            data.to(dtype) if dtype is not None else data,
            size=A.shape,
            check_invariants=False,  # scipy's canonical CSR (sum_duplicates) is valid by construction
        )
    elif layout == "coo":
        A = sp.coo_array(A)
        idx = torch.from_numpy(np.vstack([A.row, A.col]).astype(np.int64))
        data = torch.from_numpy(np.ascontiguousarray(A.data))
        if dtype is None and not is_floating(data.dtype):
            dtype = torch.float64
        t = torch.sparse_coo_tensor(idx, data.to(dtype) if dtype is not None else data, size=A.shape,
                                    check_invariants=False).coalesce()
    else:
        raise ValueError(f"layout must be 'csr' or 'coo', got {layout!r}")
    device = resolve_device(device)
    return t.to(device) if device is not None else t
