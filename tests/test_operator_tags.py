"""Structural tags on every path into a LinearOperator, and the base class's documented contracts.

``aslinearoperator(op, tags=...)`` used to add the tags to ``op`` itself, skipping the
contradiction check (a Laplacian ended up both positive and negative definite); it now returns a
tagged view and checks the tags the same way on every path.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from krylon.operators import (
    CallableOperator,
    DenseMatrix,
    Laplacian,
    ScipyOperator,
    SparseMatrix,
    aslinearoperator,
    dottest,
)
from krylon.solvers import CG

F64 = torch.float64

CONTRADICTIONS = [
    pytest.param(("positive_definite", "negative_definite"), id="pd-nd"),
    pytest.param(("positive_semidefinite", "negative_definite"), id="psd-nd"),
    pytest.param(("positive_definite", "indefinite"), id="pd-indefinite"),
    pytest.param(("positive_semidefinite", "indefinite"), id="psd-indefinite"),
    pytest.param(("negative_definite", "indefinite"), id="nd-indefinite"),
]

_SPD = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
# every way into an operator: the constructor, each matrix kind of aslinearoperator, a callable, a krylon operator
PATHS = [
    pytest.param(lambda tags: CallableOperator(lambda x: 2 * x, (3,), tags=tags), id="constructor"),
    pytest.param(lambda tags: aslinearoperator(torch.from_numpy(_SPD), tags=tags), id="torch-dense"),
    pytest.param(lambda tags: aslinearoperator(_SPD, tags=tags), id="numpy"),
    pytest.param(lambda tags: aslinearoperator(torch.from_numpy(_SPD).to_sparse_csr(), tags=tags), id="torch-csr"),
    pytest.param(lambda tags: aslinearoperator(sp.csr_array(_SPD), tags=tags), id="scipy-csr"),
    pytest.param(lambda tags: aslinearoperator(spla.aslinearoperator(_SPD), tags=tags), id="scipy-linop"),
    pytest.param(lambda tags: aslinearoperator(lambda x: 2 * x, shape=(3, 3), tags=tags), id="callable"),
    pytest.param(lambda tags: aslinearoperator(aslinearoperator(_SPD), tags=tags), id="krylon-untagged"),
    pytest.param(lambda tags: aslinearoperator(aslinearoperator(_SPD, tags=tags[:1]), tags=tags[1:]), id="krylon-split"),
]


# ----------------------------------------------------------------------------- the reported defect
def test_negative_definite_tag_on_a_laplacian_raises_and_leaves_it_alone():
    L = Laplacian((6, 6), bc="dirichlet")
    before = L.tags
    assert L.is_positive_definite
    with pytest.raises(ValueError, match="contradictory tags.*negative_definite"):
        aslinearoperator(L, tags=("negative_definite",))
    assert L.tags == before
    # the negated Laplacian is negative definite; calling it indefinite contradicts that
    assert "negative_definite" in (-L).tags
    with pytest.raises(ValueError, match="contradictory"):
        aslinearoperator(-L, tags=("indefinite",))


@pytest.mark.parametrize("tags", CONTRADICTIONS)
@pytest.mark.parametrize("make", PATHS)
def test_contradictory_tags_raise_on_every_path(make, tags):
    with pytest.raises(ValueError, match="contradictory tags"):
        make(tags)


@pytest.mark.parametrize("make", PATHS)
def test_consistent_tags_are_accepted_on_every_path(make):
    A = make(("symmetric", "positive_definite"))
    assert A.tags == {"symmetric", "positive_definite", "positive_semidefinite"}
    x = torch.arange(3.0, dtype=F64)
    assert (A @ x).shape == (3,)


def test_tags_as_a_bare_string_raise_type_error():
    with pytest.raises(TypeError, match="'symmetric'"):
        aslinearoperator(_SPD, tags="symmetric")
    with pytest.raises(TypeError, match="'symmetric'"):
        aslinearoperator(Laplacian((3, 3)), tags="symmetric")


@pytest.mark.parametrize("tag", ["symmetric", "positive_definite", "negative_definite", "indefinite"])
def test_every_tag_needs_a_square_operator(tag):
    with pytest.raises(ValueError, match="square"):
        aslinearoperator(torch.ones(2, 3, dtype=F64), tags=(tag,))


def test_unknown_tag_on_a_krylon_operator_raises_and_leaves_it_alone():
    L = Laplacian((3, 3))
    before = L.tags
    with pytest.raises(ValueError, match="unknown tags"):
        aslinearoperator(L, tags=("spd",))
    assert L.tags == before


# ----------------------------------------------------------------------------- the tagged view
def test_tags_already_held_return_the_operator_itself():
    L = Laplacian((4, 4))
    assert aslinearoperator(L) is L
    assert aslinearoperator(L, tags=("symmetric", "positive_definite")) is L


def test_tagged_view_shares_data_and_never_changes_the_argument():
    M = torch.tensor(_SPD)
    A = aslinearoperator(M)
    B = aslinearoperator(A, tags=("symmetric", "positive_definite"))
    assert A.tags == frozenset() and B is not A
    assert type(B) is DenseMatrix and B.matrix is A.matrix  # shared, not copied
    x = torch.randn(2, 3, dtype=F64)
    torch.testing.assert_close(B @ x, x @ M.T)
    assert B.H is B and A.H is not A  # only the view is self-adjoint
    assert set(B.state_dict()) == set(A.state_dict())
    # containers are the view's own: moving the view does not move the argument
    B32 = B.to(torch.float32)
    assert B32 is B and B.matrix.dtype == torch.float32 and A.matrix.dtype == F64
    # an in-place change of the shared tensor shows through both (the data is one)
    C = aslinearoperator(A, tags=("symmetric",))
    before = A.matrix.clone()
    A.matrix.mul_(2.0)
    torch.testing.assert_close(C @ x, x @ (2 * before).T)


def test_tagged_view_of_a_laplacian_keeps_its_class_and_fast_paths():
    L = Laplacian((8, 8), bc="neumann")
    assert not L.is_positive_definite
    V = aslinearoperator(L, tags=("positive_definite",))  # the user knows the mean is removed
    assert isinstance(V, Laplacian) and V.is_positive_definite and not L.is_positive_definite
    x = torch.randn(8, 8, dtype=F64)
    torch.testing.assert_close(V @ x, L @ x, rtol=0, atol=0)
    y, q = V.matvec_dot(x)
    torch.testing.assert_close(q, (x * (L @ x)).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(y, L @ x, rtol=0, atol=0)


def test_cg_trusts_a_view_tagged_symmetric_and_refuses_one_tagged_indefinite():
    S = torch.tensor(_SPD)
    b = torch.ones(3, dtype=F64)
    A = aslinearoperator(S)
    res = CG(strict=True, rtol=1e-12).solve(aslinearoperator(A, tags=("symmetric",)), b)
    assert bool(res.converged)
    torch.testing.assert_close(res.x, torch.linalg.solve(S, b), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="indefinite"):
        CG().solve(aslinearoperator(A, tags=("symmetric", "indefinite")), b)
    assert A.tags == frozenset()


# ----------------------------------------------------------------------------- dottest's documented formula
def test_dottest_returns_its_documented_mismatch():
    """``max |<Ax,y> - <x,A^H y>| / (||Ax|| ||y|| + ||x|| ||A^H y||)`` over the batch, recomputed in numpy."""
    Mt = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    M, W = Mt.numpy(), Mt.numpy() + 0.1  # W: a wrong adjoint, so the mismatch is far from rounding
    A = CallableOperator(lambda x: x @ Mt.T, (3,), (4,), adjoint=lambda y: y @ torch.from_numpy(W), dtype=F64)
    err = dottest(A, batch=(5,), generator=torch.Generator().manual_seed(7), raise_on_fail=False)
    g = torch.Generator().manual_seed(7)  # the same draws, in dottest's order: x, then y
    x = torch.randn(5, 3, dtype=F64, generator=g).numpy()
    y = torch.randn(5, 4, dtype=F64, generator=g).numpy()
    Ax, AHy = x @ M.T, y @ W
    lhs, rhs = (Ax * y).sum(-1), (x * AHy).sum(-1)
    scale = np.linalg.norm(Ax, axis=-1) * np.linalg.norm(y, axis=-1) + np.linalg.norm(x, axis=-1) * np.linalg.norm(AHy, axis=-1)
    assert err == pytest.approx(np.max(np.abs(lhs - rhs) / scale), rel=1e-12)
    assert err > 1e-3
    with pytest.raises(AssertionError, match="dot-product test failed"):
        dottest(A, generator=torch.Generator().manual_seed(7))


# ----------------------------------------------------------------------------- matrix kinds
@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_np_matrix_becomes_a_dense_matrix():
    """``np.matrix`` is an ndarray subclass and takes the ndarray path (its own branch was unreachable)."""
    m = np.matrix([[2.0, 1.0], [0.0, 3.0]])
    A = aslinearoperator(m)
    assert type(A) is DenseMatrix
    x = torch.tensor([1.0, -1.0], dtype=F64)
    torch.testing.assert_close(A @ x, torch.tensor([1.0, -3.0], dtype=F64))


def test_scipy_operator_checks_inputs_like_every_operator():
    A = aslinearoperator(spla.aslinearoperator(_SPD))
    assert type(A) is ScipyOperator
    with pytest.raises(ValueError, match="field shape"):
        A @ torch.ones(4, dtype=F64)
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.matvec(np.ones(3))
    assert type(aslinearoperator(sp.csr_array(_SPD))) is SparseMatrix


def test_base_docstring_examples_run():
    import doctest

    import krylon.operators.base as base

    result = doctest.testmod(base)
    assert result.attempted > 0 and result.failed == 0
