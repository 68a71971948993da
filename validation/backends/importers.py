"""Third-party NIR importers as backends: our file, read by other projects' own importers.

They cannot read the bridge metadata, so they are not faithful: the suite measures how far
they are from the reference instead of failing them. What each released importer does with
an IF node (measured on the graph of ``docs/compatibility.md``):

============================  =====================================================
``norse-nir`` (norse 1.1.0)    ``IAFCell``: v += I, spike when v > theta, hard reset
                               to 0, v(0) = 0; per-neuron thresholds kept; ignores
                               r, v_reset and dt. No mapping for AvgPool2d or Scale
                               (the node would be silently dropped: refused here);
                               passes ``Flatten.start_dim`` unshifted, so it flattens
                               the batch: run one sample at a time.
``spikingjelly-nir`` (2.0.0)   ``IFNode``: spike when v >= theta, hard reset to
                               v_reset, v(0) = 0; needs r == 1/dt (dt = 1 here) and
                               one scalar threshold per layer; refuses groups != 1
                               and Scale nodes.
``snntorch-nir`` (1.0.0)       ``Leaky(beta=0.9)``: leaks 10% per step, subtract reset,
                               v > theta; one scalar threshold; a Leaky returns
                               ``(spk, mem)`` and nirtorch hands the tuple to the next
                               layer, so only an IF that feeds the Output runs.
``sinabs-nir`` (sinabs 3.1.3)  ``IAFSqueeze``: v += I, ``floor(v / theta)`` spikes per
                               step when v > 0 (several spikes in one step where
                               v >= 2 theta), subtract reset, then v clamped to
                               v >= -theta; v(0) = 0; per-neuron thresholds kept;
                               ignores r and v_reset. No mapping for AvgPool2d,
                               Scale or Linear (refused here). Time is folded into
                               the batch: one call on ``[B*T, ...]``.
============================  =====================================================

Every importer builds a ``torch.fx``/nirtorch module whose ``forward(x, state)`` returns
``(output, state)``; we feed the analog input at every step (the bridge encoding), read the
output per step, and record each IF module's ``(spikes, state)`` with a forward hook, keyed
back to the NIR node name.
sinabs is the exception: its layers keep their state inside the module and take the whole
run at once, time folded into the batch (see :class:`SinabsNIR`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import nir
import torch

from bridge.format.extension import graph_semantics
from validation.backends.base import Backend, BackendRefused, NodeTrace, SimulationResult


@contextlib.contextmanager
def _running(backend: str, hooks: list[Any]) -> Iterator[None]:
    """Run an imported module without gradients: any error it raises is the backend's refusal;
    the trace ``hooks`` are removed afterwards."""
    try:
        with torch.no_grad():
            yield
    except Exception as exc:
        raise BackendRefused(
            f"{backend} built the graph but fails to run it: {exc.__class__.__name__}: {exc}"
        ) from None
    finally:
        for h in hooks:
            h.remove()


def _sanitized(name: str) -> str:
    """nirtorch's module name for a NIR node name (dots -> underscores, keywords prefixed)."""
    import keyword

    name = name.replace(".", "_")
    return "nir_node_" + name if keyword.iskeyword(name) else name


def _split_hook_output(out: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(spikes, v) from an IF module's output: ``(z, state)`` in all three frameworks."""
    if isinstance(out, torch.Tensor):
        return out, None
    spikes, state = out[0], out[1] if len(out) > 1 else None
    if isinstance(state, torch.Tensor):
        return spikes, state
    v = getattr(state, "v", None)
    if v is None and isinstance(state, (tuple, list)) and state and isinstance(state[0], torch.Tensor):
        v = state[0]
    return spikes, v


class _NirtorchImporter(Backend):
    """Shared driver: build with the importer, step T times, hook every IF node."""

    faithful = False
    compute_dtype: torch.dtype = torch.float32  # what the importer builds its weights in
    per_sample = False

    def __init__(self, graph: nir.NIRGraph, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(graph, dtype=dtype, device=device)
        self._check()

    def _import(self) -> torch.nn.Module:
        raise NotImplementedError

    def _check(self) -> None:
        """Refuse (BackendRefused) before building where the importer would be silently wrong."""

    def build(self) -> torch.nn.Module:
        try:
            # the importers print and log while building; keep the terminal clean
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                logging.disable(logging.WARNING)
                try:
                    return self._import()
                finally:
                    logging.disable(logging.NOTSET)
        except BackendRefused:
            raise
        except Exception as exc:  # the importers raise ValueError/AssertionError/KeyError...
            raise BackendRefused(f"{self.name} refuses the graph: {exc.__class__.__name__}: {exc}") from None

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        if self.per_sample and x.shape[0] > 1:
            parts = [self.run(x[i : i + 1], steps, trace=trace) for i in range(x.shape[0])]
            return SimulationResult(
                torch.cat([p.outputs for p in parts], dim=1),
                {k: NodeTrace(torch.cat([p.traces[k].spikes for p in parts], 1),
                              torch.cat([p.traces[k].v for p in parts], 1))
                 for k in parts[0].traces},
                parts[0].readout_kind,
            )
        module = self.build()  # fresh module: snnTorch keeps its state inside the module
        if_names = [n for n, node in self.graph.nodes.items() if isinstance(node, nir.IF)]
        modules = dict(module.named_modules())
        records: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {n: [] for n in if_names}
        hooks = []
        if trace:
            for n in if_names:
                mod = modules.get(_sanitized(n))
                if mod is not None:
                    hooks.append(mod.register_forward_hook(
                        lambda _m, _i, out, n=n: records[n].append(_split_hook_output(out))))
        xin = x.to(self.compute_dtype)
        outputs = []
        state = None
        with _running(self.name, hooks):
            for _ in range(steps):
                out = module(xin, state) if state is not None else module(xin)
                if isinstance(out, tuple):
                    out, state = out[0], out[1]
                if isinstance(out, tuple):  # snnTorch: the Output receives Leaky's (spk, mem)
                    out = out[0]
                out = out.reshape(x.shape[0], -1) if out.dim() == 1 or out.shape[0] != x.shape[0] else out
                outputs.append(out.to(self.dtype))
        traces = {}
        for n, rec in records.items():
            if len(rec) != steps:
                continue
            shape = (x.shape[0], *self._shape(n))
            spikes = torch.stack([s.reshape(shape) for s, _ in rec]).to(self.dtype)
            vs = [v for _, v in rec]
            v = (torch.stack([t.reshape(spikes.shape[1:]) for t in vs]).to(self.dtype)
                 if all(t is not None for t in vs) else torch.full_like(spikes, float("nan")))
            traces[n] = NodeTrace(spikes, v)
        return SimulationResult(torch.stack(outputs), traces, graph_semantics(self.graph).readout)

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.graph.nodes[name].v_threshold.shape)


class NorseNIR(_NirtorchImporter):
    """``norse.torch.from_nir(graph, dt=1.0)`` (IAFCell: hard reset, v > theta, v(0) = 0)."""

    name = "norse-nir"
    description = "norse.torch.from_nir (IAFCell: hard reset, v > theta, v(0)=0)"
    # node types norse 1.1.0's _import_norse_module maps; any other node would be dropped
    _MAPPED = (nir.Input, nir.Output, nir.Affine, nir.Linear, nir.Conv2d, nir.Flatten,
               nir.IF, nir.LIF, nir.CubaLIF, nir.SumPool2d)

    def _check(self) -> None:
        dropped = sorted({type(n).__name__ for n in self.graph.nodes.values() if not isinstance(n, self._MAPPED)})
        if dropped:
            raise BackendRefused(
                f"norse-nir refuses the graph: norse.torch.from_nir has no mapping for "
                f"{', '.join(dropped)} (it would silently drop the node)"
            )
        # Flatten(start_dim) is handed to torch unshifted: it flattens the batch dimension
        self.per_sample = any(isinstance(n, nir.Flatten) for n in self.graph.nodes.values())

    def _import(self) -> torch.nn.Module:
        import norse.torch

        return norse.torch.from_nir(self.graph, dt=1.0, ignore_warnings=True)


class SpikingJellyNIR(_NirtorchImporter):
    """``spikingjelly.activation_based.nir_exchange.import_from_nir(graph, dt=1.0)``."""

    name = "spikingjelly-nir"
    description = "spikingjelly nir_exchange.import_from_nir (IFNode: hard reset, v >= theta, v(0)=0)"

    def _import(self) -> torch.nn.Module:
        from spikingjelly.activation_based.nir_exchange import import_from_nir

        # bridge writes r = 1: the importer needs r == 1/dt, so dt = 1. It builds in any dtype.
        self.compute_dtype = self.dtype
        return import_from_nir(self.graph, dt=1.0, dtype=self.dtype, step_mode="s")


class SnnTorchNIR(_NirtorchImporter):
    """``snntorch.import_nir.import_from_nir(graph)`` (Leaky(beta=0.9), subtract, v > theta)."""

    name = "snntorch-nir"
    description = "snntorch import_from_nir (Leaky beta=0.9, subtract reset, v > theta)"

    def _import(self) -> torch.nn.Module:
        from snntorch.import_nir import import_from_nir

        return import_from_nir(self.graph)


class SinabsNIR(_NirtorchImporter):
    r"""``sinabs.from_nir(graph, batch_size=B)`` (``IAFSqueeze``, multi-spike, subtract reset).

    Per IF neuron and step, sinabs 3.1.3 computes (``sinabs.layers.functional.lif``,
    ``MultiSpike``, ``MembraneSubtract``, ``min_v_mem = -theta``)

    .. math::
        m = v + I, \qquad
        s = [m > 0] \,\lfloor m / \theta \rfloor, \qquad
        v' = \max(m - \theta s, -\theta), \qquad v(0) = 0,

    so while m < 2 theta it is the method's rule (s = [m >= theta], subtract reset) from
    v(0) = 0; above, it emits several spikes in one step, and it never lets v fall below
    -theta. r, v_reset and the bridge metadata (initial potential) are not read.

    sinabs' layers are stateful and expect time folded into the batch, sample-major:
    ``[B*T, ...]`` with row ``b*T + t`` (``SqueezeMixin`` reshapes it to ``[B, T, ...]``).
    A fresh module per run starts from v = 0; the per-step potential is sinabs' own
    ``recordings["v_mem"]`` (``record_states``), taken after the reset and the clamp.
    Only ``sinabs.nir`` is used: ``sinabs.backend.dynapcnn`` would import samna.
    """

    name = "sinabs-nir"
    description = "sinabs.from_nir (IAF: subtract reset, v >= theta, several spikes per step, v >= -theta, v(0)=0)"
    # node types sinabs 3.1.3's _import_sinabs_module maps; any other becomes None in nirtorch
    _MAPPED = (nir.Input, nir.Output, nir.Affine, nir.Conv1d, nir.Conv2d, nir.Flatten,
               nir.IF, nir.LI, nir.LIF, nir.SumPool2d)
    _batch_size = 1  # IAFSqueeze needs the batch size to unfold [B*T, ...]: set per run

    def _check(self) -> None:
        unmapped = sorted({type(n).__name__ for n in self.graph.nodes.values() if not isinstance(n, self._MAPPED)})
        if unmapped:
            raise BackendRefused(
                f"sinabs-nir refuses the graph: sinabs.from_nir has no mapping for "
                f"{', '.join(unmapped)} (the built module cannot run it)"
            )

    def _import(self) -> torch.nn.Module:
        import sinabs  # sinabs/__init__ does not import samna (sinabs.backend.dynapcnn would)

        return sinabs.from_nir(self.graph, batch_size=self._batch_size)

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        batch = x.shape[0]
        self._batch_size = batch
        module = self.build()  # fresh module: sinabs keeps v_mem in the layers
        modules = dict(module.named_modules())
        layers = {n: modules[_sanitized(n)] for n, node in self.graph.nodes.items()
                  if isinstance(node, nir.IF) and _sanitized(n) in modules}
        spikes: dict[str, torch.Tensor] = {}  # node -> the layer's output, [B*T, *shape]
        hooks = []
        if trace:
            for n, mod in layers.items():
                mod.record_states = True  # sinabs then keeps v_mem of every step in mod.recordings

                def keep(_m: torch.nn.Module, _i: Any, out: torch.Tensor, n: str = n) -> None:
                    spikes[n] = out

                hooks.append(mod.register_forward_hook(keep))
        # the same current at every step, time folded into the batch (row b*T + t)
        xin = (x.to(self.compute_dtype).unsqueeze(1)
               .expand(batch, steps, *x.shape[1:]).reshape(batch * steps, *x.shape[1:]))
        with _running(self.name, hooks):
            out = module(xin)
            if isinstance(out, tuple):  # nirtorch's GraphExecutor returns (output, state)
                out = out[0]

        def per_step(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
            """[B*T, ...] or [B, T, ...] -> [T, B, *shape] in the requested dtype."""
            return t.reshape(batch, steps, *shape).transpose(0, 1).to(self.dtype)

        traces = {}
        for n, s in spikes.items():
            shape = self._shape(n)
            traces[n] = NodeTrace(per_step(s, shape), per_step(layers[n].recordings["v_mem"], shape))
        return SimulationResult(per_step(out, tuple(out.shape[1:])), traces, graph_semantics(self.graph).readout)
