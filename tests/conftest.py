import os

import pytest
import torch

# Without a GPU the Triton kernels run under the interpreter, which @triton.jit reads when it decorates a
# kernel: set it before any test module imports npdg.kernels (CI exports it too; this covers any subset of
# files, e.g. one whose imports reach npdg.kernels before test_sensitivity.py sets it)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spin-waits
    made the model tests ~5x slower. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
