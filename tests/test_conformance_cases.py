"""The frozen conformance cases (validation/cases/data): every backend against the reference's answers.

Each case is run through each faithful backend in float64 and must reproduce the committed
spikes, potentials and outputs exactly; a case a backend cannot run must be declared for it
and refused with a BridgeError. The reference is tested the same way, so a change of the
reference that changes any number fails here (regenerate the cases on purpose, and review).
"""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest

from bridge.reference.ops import REGISTRY
from validation import backends as registry
from validation import cases, conformance
from validation.cases import generate
from validation.cases.catalog import CASES
from tests.standin_numpy import NumpyIF, NumpyIFStrict

FAITHFUL = list(conformance.UNSUPPORTED)  # every built-in faithful backend declares its refusals there
NAMES = cases.names()


def test_every_faithful_backend_is_installed_and_declared():
    for name in FAITHFUL:
        assert registry.missing_requirement(name) is None, name
        assert registry.get_backend(name).faithful
        assert name in conformance.UNSUPPORTED
    assert conformance.UNSUPPORTED["reference"] == {}  # the reference runs every case


@pytest.mark.parametrize("case", NAMES)
@pytest.mark.parametrize("backend", FAITHFUL)
def test_backend_reproduces_the_frozen_case_exactly(backend, case):
    c = cases.load(case)
    cls = registry.get_backend(backend)
    declared = {t for t in conformance.unsupported_tags(backend, cls) if t in c.tags}
    result = conformance.run_case(backend, cls, c)
    assert result.passed, result.detail
    assert result.refused == bool(declared), result.detail
    if declared:  # the refusal is a clear one-line message naming the cause
        assert "refused as declared" in result.detail and "\n" not in result.detail
    else:
        assert result.detail == "exact"


def test_cases_cover_every_node_type_the_reference_runs():
    seen = {type(node) for name in NAMES for node in cases.load(name).graph.nodes.values()}
    assert set(REGISTRY) <= seen, f"no case for {sorted(t.__name__ for t in set(REGISTRY) - seen)}"


def test_cases_cover_the_semantics_that_matter():
    loaded = {n: cases.load(n) for n in NAMES}
    manifest = cases.manifest()
    assert any("nir-text" in c.tags for c in loaded.values())
    assert manifest["if_ties"]["exact_ties"] >= 16  # m == theta exactly, many times
    # per-neuron thresholds and initial potentials in one IF node
    per_neuron = [n for n, c in loaded.items() for node in c.graph.nodes.values()
                  if isinstance(node, nir.IF) and "bridge" in node.metadata
                  and np.unique(node.v_threshold).size > 1 and np.unique(node.metadata["bridge"]["v_init"]).size > 1]
    assert "if_ties" in per_neuron and "if_neuron_variants" in per_neuron
    # a residual sum: a node with two incoming edges
    g = loaded["residual"].graph
    assert sum(dst == "if3" for _, dst in g.edges) == 2
    conv = [node for c in loaded.values() for node in c.graph.nodes.values() if isinstance(node, nir.Conv2d)]
    assert any(np.any(np.asarray(n.stride) > 1) for n in conv) and any(isinstance(n.padding, str) for n in conv)
    assert any(np.any(np.asarray(n.dilation) > 1) for n in conv)


def test_frozen_ties_follow_each_semantics():
    """At m == theta a bridge IF fires (>=) and keeps m - theta; a NIR-text IF fires only above."""
    for name in NAMES:
        c = cases.load(name)
        for node_name, trace in c.traces.items():
            node = c.graph.nodes[node_name]
            if not isinstance(node, nir.IF):
                continue
            theta, s, v = np.asarray(node.v_threshold), trace.spikes, trace.v
            if "bridge" in node.metadata:
                m = v + theta * s
                assert np.all((m >= theta) == (s == 1)), (name, node_name)
            else:
                assert np.all(v[s == 1] == np.broadcast_to(node.v_reset, v.shape)[s == 1]), (name, node_name)
                assert np.all(v[s == 0] <= np.broadcast_to(theta, v.shape)[s == 0]), (name, node_name)


def test_the_compatibility_table_spike_strings():
    """The two reference rows of docs/compatibility.md, from the frozen data (not the simulator)."""
    def strings(case):
        s = cases.load(case).traces["neuron"].spikes[:, 0, :]
        return " ".join("".join(str(int(b)) for b in s[:, i]) for i in range(s.shape[1]))

    assert strings("affine_if") == "00010001 00010010 01010110 11111111"
    assert strings("nir_text_if") == "00001000 00010001 01010101 01010101"


def test_the_cases_are_kilobytes():
    sizes = {p.name: p.stat().st_size for p in cases.DATA.iterdir()}
    assert sum(v for k, v in sizes.items() if k.endswith(".npz")) < 64 * 1024
    assert max(v for k, v in sizes.items() if k.endswith(".nir")) < 160 * 1024  # HDF5 headers, mostly zeros


def _same_graph(a: nir.NIRGraph, b: nir.NIRGraph) -> bool:
    if set(a.nodes) != set(b.nodes) or sorted(a.edges) != sorted(b.edges):
        return False
    for name in a.nodes:
        x, y = a.nodes[name].to_dict(), b.nodes[name].to_dict()
        if x.keys() != y.keys():
            return False
        for key in x:
            if isinstance(x[key], dict):
                continue  # metadata: compared through the expectations it produces
            if not np.array_equal(np.asarray(x[key]), np.asarray(y[key])):
                return False
    return True


def test_the_generator_reproduces_the_committed_files(tmp_path):
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text()) == cases.manifest()
    assert [s.name for s in CASES] == NAMES
    for name in NAMES:
        assert _same_graph(nir.read(tmp_path / f"{name}.nir"), cases.load(name).graph), name
        with np.load(tmp_path / f"{name}.npz") as new, np.load(cases.DATA / f"{name}.npz") as old:
            assert sorted(new.files) == sorted(old.files)
            for key in new.files:
                assert np.array_equal(new[key], old[key]), (name, key)
    # an existing case is not overwritten without --force, and the error is one line
    assert generate.main(["--out", str(tmp_path)]) == 2


# -- the runner and the register hook, as a third party would use them -----------------------------
IF_CASES = ["affine_if", "linear_scale", "if_ties", "if_neuron_variants", "residual"]


@pytest.fixture
def numpy_backends():
    registry.register("numpy-if", NumpyIF, unsupported={
        "nir-text": "bridge IF only", "leaky": "no LIF", "integrator": "no I", "threshold": "no Threshold"})
    registry.register("numpy-if-gt", lambda graph, **kw: NumpyIFStrict(graph, **kw), description="wrong rule")
    yield
    registry.unregister("numpy-if")
    registry.unregister("numpy-if-gt")


def test_register_hook_and_cli_pass(numpy_backends, capsys):
    assert "numpy-if" in registry.names()
    code = conformance.main(["--backend", "numpy-if", *sum((["--case", c] for c in
                                                            IF_CASES + ["nir_text_if", "leaky"]), [])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "numpy-if: 7/7 cases pass (2 refused as declared), 0 fail" in out
    with pytest.raises(Exception, match="already registered"):
        registry.register("numpy-if", NumpyIF)


def test_cli_fails_a_wrong_backend_with_exit_1(numpy_backends, capsys):
    code = conformance.main(["--backend", "numpy-if-gt", "--case", "if_ties", "--case", "nir_text_if"])
    out = capsys.readouterr().out
    assert code == 1
    line = next(l for l in out.splitlines() if l.startswith("if_ties"))
    assert "FAIL" in line and "spikes of 'neuron' differs at t=1" in line
    # nir_text_if is not declared for it: running it with bridge's rule is a failure too
    assert "FAIL" in next(l for l in out.splitlines() if l.startswith("nir_text_if"))


def test_a_stale_declaration_fails(numpy_backends):
    cls = registry.get_backend("numpy-if")
    cls_declaring = type("Declaring", (cls,), {"unsupported_tags": {"threshold": "x"}})
    c = cases.load("if_ties")
    object.__setattr__(c, "tags", ("threshold",))  # pretend the case needs Threshold nodes
    result = conformance.run_case("numpy-if", cls_declaring, c)
    assert not result.passed and "ran without refusing" in result.detail


def test_cli_bad_input_exit_2(capsys):
    assert conformance.main(["--backend", "nest"]) == 2
    assert "unknown backend 'nest'" in capsys.readouterr().err
    assert conformance.main(["--backend", "reference", "--case", "nope"]) == 2
    assert conformance.main(["--backend", "reference", "--import", "no_such_module_xyz"]) == 2
