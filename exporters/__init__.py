"""Exporters: native SpikingJelly and Norse models from a bridge NIR graph.

* :func:`exporters.spikingjelly.build` / :func:`exporters.norse.build`: graph -> nn.Module
* :func:`write_artifact`: graph -> a folder that loads without bridge

Exporters read only the NIR graph (never a PyTorch model). The framework modules are
imported on first use, so a missing framework does not break the other target.
"""

from __future__ import annotations

from exporters.artifact import write_artifact

__all__ = ["write_artifact"]
