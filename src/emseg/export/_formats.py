"""Writers of the ONNX and TorchScript files, each checked against torch on real tiles before it is kept."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from emseg.constants import EXPORT_METADATA_KEY as METADATA_KEY
from emseg.export._export import OPSET, compare, require
from emseg.inference import onnx_session

logger = logging.getLogger(__name__)

__all__ = ["read_torchscript_metadata", "trace_frozen", "write_onnx", "write_torchscript"]

#: TorchScript extra file of the emseg metadata (ONNX: ``metadata_props`` under METADATA_KEY).
TORCHSCRIPT_EXTRA = "emseg.json"


def _dynamic_axes(spatial_dims: int) -> dict[str, dict[int, str]]:
    axes = {0: "batch", 2: "y", 3: "x"} if spatial_dims == 2 else {0: "batch", 2: "z", 3: "y", 4: "x"}
    return {"input": axes, "output": dict(axes)}


def write_onnx(net: torch.nn.Module, meta: dict[str, Any], path: Path, inputs: list[torch.Tensor],
               refs: list[torch.Tensor]) -> float:
    """ONNX (opset 17, dynamic batch and spatial axes) with the metadata in ``metadata_props``; returns the
    largest probability difference against torch over the check tiles."""
    onnx = require("onnx", "ONNX export")
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice and tracer hints (checked below)
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (inputs[0],), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes=_dynamic_axes(meta["spatial_dims"]),
                          do_constant_folding=True)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
    proto.doc_string = (f"emseg {meta['kind']} exported from a model.pt (sha256 {meta['source_sha256'][:12]}); "
                        f"classes {', '.join(meta['classes'])}; softmax of the output gives the probabilities")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    session = onnx_session(path)
    return max(compare(ref, session.run(None, {"input": x.numpy()})[0], "the ONNX export")
               for x, ref in zip(inputs, refs))


def trace_frozen(net: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """A traced, frozen (constants folded, CPU) TorchScript copy of ``net``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
        return torch.jit.freeze(traced.eval())


def write_torchscript(net: torch.nn.Module, meta: dict[str, Any], path: Path, inputs: list[torch.Tensor],
                      refs: list[torch.Tensor]) -> float:
    """Frozen TorchScript with the metadata as the extra file ``emseg.json``; returns the largest probability
    difference against torch over the check tiles."""
    frozen = trace_frozen(net, inputs[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(frozen, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(meta, sort_keys=True)})
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return max(compare(ref, loaded(x).numpy(), "the TorchScript export") for x, ref in zip(inputs, refs))


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    extra = {TORCHSCRIPT_EXTRA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_EXTRA])
