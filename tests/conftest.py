"""Fixtures shared by test modules (opt in with ``pytestmark = pytest.mark.usefixtures(...)``)."""

import pytest
import torch


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny problems: one intra-op thread avoids thread contention on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
