"""Fixtures shared by test modules (opt in with ``pytestmark = pytest.mark.usefixtures(...)``)."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_intra_op_thread():
    """The whole suite runs torch on one intra-op thread: its problems are tiny, and on a shared 2-core machine two
    OpenMP threads spin-wait against other processes (a DCDM test took 35 s on 2 threads under load, 10 s on 1).
    Tests that need more threads set them themselves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny problems: one intra-op thread avoids thread contention on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
