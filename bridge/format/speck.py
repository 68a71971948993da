r"""SynSense Speck / DynapCNN: the chip's limits and the input encoding, stated once.

Shared by the legalisation pass (:mod:`bridge.passes.speck`) and the writer
(:mod:`exporters.speck`). The limits are those of sinabs 3.1.3's own code
(``sinabs/backend/dynapcnn/chips/dynapcnn.py`` ``get_constraints``,
``dynapcnn_layer.py`` ``memory_summary``): 9 cores,

.. math::
    K = C_{in} \cdot 2^{\lceil \log_2(k_h k_w) \rceil + \lceil \log_2 C_{out} \rceil}, \qquad
    N = C_{out} \cdot 2^{\lceil \log_2 H \rceil + \lceil \log_2 W \rceil}

words of kernel and neuron memory per layer (``H x W`` the layer's neuron map, before pooling),
``C_out`` words of bias memory when the layer has a bias; core ``i`` holds at most
``KERNEL_MEMORY[i]`` / ``NEURON_MEMORY[i]`` / ``BIAS_MEMORY`` of them. Weights are 8-bit,
thresholds and potentials 16-bit (sinabs's ``discretize``); kernels and pooling windows are
square (sinabs's layer checks); a core sends its spikes to at most 2 other cores
(``MAX_DESTINATIONS``). The pooling sizes 1, 2, 4, 8 with stride = size (``POOLING_SIZES``) are
the chip documentation's, not checked by sinabs: an assumption, not verified on a chip.

**Input events.** A static image ``x`` in [0, 1] enters as integer event counts: at every step
pixel ``p`` sends :math:`n_p = \mathrm{round}(L\, x_p)` events (``L`` = ``input_levels``), the
same counts at every step (:func:`event_counts`); the graph's first layer holds ``W / L`` so the
current is :math:`W x` up to the rounding of ``x`` to the grid ``1/L``.
"""

from __future__ import annotations

import math

import torch

KI = 1024
CORES = 9
KERNEL_MEMORY: tuple[int, ...] = tuple(k * KI for k in (16, 16, 16, 32, 32, 64, 64, 16, 16))
NEURON_MEMORY: tuple[int, ...] = tuple(k * KI for k in (64, 64, 64, 32, 32, 16, 16, 16, 16))
BIAS_MEMORY = 1024
MAX_DESTINATIONS = 2
POOLING_SIZES = (1, 2, 4, 8)
WEIGHT_BITS = 8
STATE_BITS = 16


def _ceil_log2(n: int) -> int:
    return math.ceil(math.log2(n)) if n > 1 else 0


def kernel_memory(c_in: int, c_out: int, k_h: int, k_w: int) -> int:
    """Kernel memory words of one layer: C_in * 2^(ceil(log2(k_h k_w)) + ceil(log2 C_out))."""
    return c_in * 2 ** (_ceil_log2(k_h * k_w) + _ceil_log2(c_out))


def neuron_memory(c_out: int, h: int, w: int) -> int:
    """Neuron memory words of one layer: C_out * 2^(ceil(log2 H) + ceil(log2 W))."""
    return c_out * 2 ** (_ceil_log2(h) + _ceil_log2(w))


def event_counts(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Per-step event counts of a static image ``x`` in [0, 1]: ``round(levels * clip(x, 0, 1))``."""
    return torch.round(levels * torch.clamp(x, 0.0, 1.0))
