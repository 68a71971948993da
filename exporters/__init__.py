"""Exporters: native SpikingJelly, Norse, snnTorch and sinabs models from a bridge NIR graph.

* :func:`exporters.spikingjelly.build`, :func:`exporters.norse.build`,
  :func:`exporters.snntorch.build`, :func:`exporters.sinabs.build`: graph -> nn.Module
* :func:`write_artifact`: graph -> a folder that loads without bridge

Exporters read only the NIR graph (never a PyTorch model). The framework modules are
imported on first use, so a missing framework does not break the other targets.
"""

from __future__ import annotations

from exporters.artifact import write_artifact

__all__ = ["write_artifact"]
