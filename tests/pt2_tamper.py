"""Build torch.export archives at test time and tamper with their members.

Helpers for the code-execution tests: every payload, if unpickled or evaluated, creates a
marker file, so a test can tell whether anything ran.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch


class MarkerPayload:
    """Unpickling this object calls ``open(marker, "w")``: the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_save_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def rezip(items: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, content in items.items():
            z.writestr(name, content)
    return buf.getvalue()


def top(items: dict[str, bytes]) -> str:
    return next(iter(items)).split("/", 1)[0]


def pt2_bytes(model: torch.nn.Module, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, *shape),)), buf)
    return buf.getvalue()


def tampered_pt2(valid: bytes, vector: str, marker: Path) -> bytes:
    """``valid`` with one member replaced or added so that loading it would run code."""
    items = members(valid)
    root = top(items)
    evil_save = torch_save_bytes(MarkerPayload(marker))
    evil_pickle = pickle.dumps(MarkerPayload(marker), protocol=2)
    if vector == "sample_inputs":
        items[f"{root}/data/sample_inputs/model.pt"] = evil_save
    elif vector == "sample_inputs_raw_pickle":
        items[f"{root}/data/sample_inputs/model.pt"] = evil_pickle
    elif vector in ("pickled_weight", "pickled_constant"):
        folder, cfg = ("weights", "model_weights_config.json") if vector == "pickled_weight" else (
            "constants", "model_constants_config.json")
        key = f"{root}/data/{folder}/{cfg}"
        config = json.loads(items[key])
        if vector == "pickled_weight":
            fqn = next(iter(config["config"]))
            config["config"][fqn]["use_pickle"] = True
            items[f"{root}/data/weights/{config['config'][fqn]['path_name']}"] = evil_save
        else:
            config["config"]["evil"] = {"path_name": "tensor_9", "is_param": False,
                                        "use_pickle": True, "tensor_meta": None}
            items[f"{root}/data/constants/tensor_9"] = evil_save
        items[key] = json.dumps(config).encode()
    elif vector in ("opaque_obj", "custom_obj"):
        key = f"{root}/data/constants/model_constants_config.json"
        config = json.loads(items[key])
        name = f"{vector}_0"
        config["config"]["evil"] = {"path_name": name, "is_param": False, "use_pickle": True,
                                    "tensor_meta": None}
        items[key] = json.dumps(config).encode()
        items[f"{root}/data/constants/{name}"] = evil_pickle
    elif vector == "legacy_weights":
        items[f"{root}/data/weights/model.pt"] = evil_save
    elif vector == "shape_expression":
        key = f"{root}/models/model.json"
        text = items[key].decode()
        code = f"__import__('builtins').open({str(marker)!r}, 'w') and 1"
        expr = json.dumps({"as_expr": {"expr_str": code, "hint": {"as_int": 1}}})
        assert '"sizes": [{"as_int": 1}' in text
        items[key] = text.replace('"sizes": [{"as_int": 1}', f'"sizes": [{expr}', 1).encode()
    elif vector == "guards_code":
        key = f"{root}/models/model.json"
        program = json.loads(items[key])
        program["guards_code"] = [f"open({str(marker)!r}, 'w')"]
        items[key] = json.dumps(program).encode()
    elif vector == "aotinductor":
        items[f"{root}/data/aotinductor/model/model.so"] = b"\x7fELF" + b"\0" * 60
    else:  # pragma: no cover - a typo in a test
        raise ValueError(vector)
    return rezip(items)


VECTORS = ("sample_inputs", "sample_inputs_raw_pickle", "pickled_weight", "pickled_constant",
           "opaque_obj", "custom_obj", "legacy_weights", "shape_expression", "guards_code",
           "aotinductor")
