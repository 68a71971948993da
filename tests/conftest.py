"""Test-wide settings.

Tests run under pytest-xdist with one worker per core; one torch thread per worker avoids
oversubscribing the cores (two threads made tiny float64 matmuls ~300x slower under load).
"""

import torch

torch.set_num_threads(1)
