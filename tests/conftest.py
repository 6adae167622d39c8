"""Shared test settings."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: the nets are tiny (ops, not flops, bound the time) and the CI machine has
    2 shared cores, where a 2-thread process stalls under other load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The runner sets torch's thread count process-wide; give the next test its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
