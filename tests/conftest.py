import pytest
import torch


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spin-waits
    made the model tests ~5x slower. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
