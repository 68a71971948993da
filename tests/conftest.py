"""Test-wide settings.

Tests run under pytest-xdist with one worker per core; one torch thread per worker avoids
oversubscribing the cores (two threads made tiny float64 matmuls ~300x slower under load).
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One thread again for every test module (an in-process ``bridge demo --threads N`` may
    have changed it): tiny tensors only wait for a second thread on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
