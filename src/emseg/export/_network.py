"""The network an export writes: one torch module from a checkpoint, with everything emseg adds around it
(the modules themselves, SingleNetwork and EnsembleNetwork, are in emseg.models: prediction rebuilds them).

A single model becomes its network plus the checkpoint's calibration offsets (added to the logits). An
ensemble (``mean`` or ``weighted``) becomes one module that feeds every member its own normalisation and
context slices, averages the members' softmax probabilities with the ensemble's weights, and returns their
logarithm: a softmax of the output gives the ensemble's probabilities, as a softmax of a single network's
logits gives its probabilities. Either way the exported module maps the *normalised* input
``(N, C, Y, X)`` (3-D: ``(N, 1, Z, Y, X)``) to ``(N, K, ...)`` "logits" whose softmax is emseg's probability.

The metadata (:func:`export_metadata`) says how to feed it: classes, normalisation, context slices,
window, overlap and the receptive-field margin emseg measures.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from emseg._version import __version__
from emseg.constants import EXPORT_FORMAT, EXPORT_VERSION
from emseg.models import (
    ENSEMBLE_BACKEND,
    MODELS,
    CheckpointError,
    EnsembleNetwork,
    SingleNetwork,
    build_model,
    network_from_metadata,  # noqa: F401 - imported by the architecture file inside bioimage.io packages
    skeleton,
)

__all__ = ["ExportRefused", "build_export_network", "check_exportable", "export_metadata", "halo"]


class ExportRefused(ValueError):
    """The model cannot be exported to the requested format; the message says why and what to do."""


def _member_network(ckpt: dict[str, Any], *, on_meta: bool = False) -> nn.Module:
    meta = ckpt["model"]
    if on_meta:
        with torch.device("meta"):
            return build_model(meta["name"], in_channels=meta["in_channels"], num_classes=len(ckpt["classes"]),
                               options=meta["options"], pretrained=False)
    return build_model(meta["name"], in_channels=meta["in_channels"], num_classes=len(ckpt["classes"]),
                       options=meta["options"], pretrained=False)


def check_exportable(ckpt: dict[str, Any], fmt: str) -> None:
    """Refuse what one exported network cannot compute (random forest, grain-filter inputs, vote, mixed members)."""
    if ckpt.get("backend") == ENSEMBLE_BACKEND:
        if ckpt.get("method") == "vote":
            raise ExportRefused(f"a majority-vote ensemble is not exportable to {fmt}: a vote is not one network's "
                                "output; rebuild it with `emseg ensemble --method mean` or `--method weighted`")
        for i, member in enumerate(ckpt["members"]):
            try:
                check_exportable(member, fmt)
            except ExportRefused as err:
                raise ExportRefused(f"ensemble member {i}: {err}") from None
        dims = {int(MODELS.get(m["model"]["name"]).spatial_dims) for m in ckpt["members"]}
        if len(dims) > 1:
            raise ExportRefused(f"an ensemble mixing 2-D and 3-D members is not exportable to {fmt} as one network "
                                "(their inputs differ); export the members separately")
        if any(MODELS.get(m["model"]["name"]).valid_padding for m in ckpt["members"]):
            raise ExportRefused(f"an ensemble with a valid-padding member (unet-original) is not exportable to "
                                f"{fmt} as one network; export the members separately")
        return
    name = ckpt["model"]["name"]
    spec = MODELS.get(name)
    if spec.backend != "torch":
        raise ExportRefused(f"model {name!r} (backend {spec.backend}) is not exportable to {fmt}: only neural "
                            "networks are; the random forest's filters and trees run in emseg (`emseg predict`)")
    if (ckpt.get("preprocess") or {}).get("grain_filter"):
        raise ExportRefused(f"model {name!r} was trained with preprocess.grain_filter, whose filtered input channels "
                            f"are computed outside the network: not exportable to {fmt}")


def build_export_network(ckpt: dict[str, Any], *, on_meta: bool = False) -> nn.Module:
    """The exported module of a checkpoint (single model or ensemble), weights loaded, in eval mode."""
    if ckpt.get("backend") == ENSEMBLE_BACKEND:
        members, scales, shifts, channels = [], [], [], []
        first = ckpt["members"][0]["normalization"]
        context = max(int(m["model"].get("context_slices", 1)) for m in ckpt["members"])
        for member in ckpt["members"]:
            members.append(build_export_network(member, on_meta=on_meta))
            norm = member["normalization"]
            # x0 = (raw - m0) / s0 ; xi = (raw - mi) / si = x0 * s0 / si + (m0 - mi) / si
            scales.append(float(first["std"]) / float(norm["std"]))
            shifts.append((float(first["mean"]) - float(norm["mean"])) / float(norm["std"]))
            c = int(member["model"].get("context_slices", 1))
            start = context // 2 - c // 2
            channels.append((start, start + c))
        total = sum(float(w) for w in ckpt["weights"])
        weights = [float(w) / total for w in ckpt["weights"]]
        if ckpt["method"] == "mean":
            weights = [1.0 / len(members)] * len(members)
        return EnsembleNetwork(members, weights=weights, scales=scales, shifts=shifts, channels=channels).eval()
    net = _member_network(ckpt, on_meta=on_meta)
    if not on_meta:
        try:
            net.load_state_dict(ckpt["state"])
        except RuntimeError as err:
            raise CheckpointError(f"weights do not fit model {ckpt['model']['name']!r}: {err}") from None
    offsets = (ckpt.get("inference") or {}).get("logit_offsets")
    return SingleNetwork(net, len(ckpt["classes"]), list(offsets) if offsets else None).eval()


def export_metadata(ckpt: dict[str, Any], predictor: Any, *, source_sha256: str) -> dict[str, Any]:
    """What a reader of the exported file needs to feed it exactly as emseg does (JSON-able)."""
    is_ensemble = ckpt.get("backend") == ENSEMBLE_BACKEND
    first = ckpt["members"][0] if is_ensemble else ckpt
    spec = MODELS.get(first["model"]["name"])
    context = (max(int(m["model"].get("context_slices", 1)) for m in ckpt["members"]) if is_ensemble
               else int(ckpt["model"].get("context_slices", 1)))
    members = ckpt["members"] if is_ensemble else [ckpt]
    inner = predictor.members[0] if is_ensemble else predictor
    radius = max(int(p.receptive_radius()) for p in (predictor.members if is_ensemble else [predictor])) \
        if spec.spatial_dims == 2 else None
    inference = first.get("inference") or {}
    offsets = [(m.get("inference") or {}).get("logit_offsets") for m in members]
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "emseg_version": __version__,
        "kind": "ensemble" if is_ensemble else "network",
        "classes": list(ckpt["classes"]),
        "normalization": {"mean": float(first["normalization"]["mean"]), "std": float(first["normalization"]["std"])},
        "in_channels": context if spec.spatial_dims == 2 else 1,
        "context_slices": context,
        "spatial_dims": int(spec.spatial_dims),
        "window": [int(w) for w in inner.window],
        "window_3d": [int(w) for w in inner.window_3d] if spec.spatial_dims == 3 else None,
        "overlap": float(inner.overlap),
        "receptive_radius": radius,
        "divisor": int(inference.get("divisor", 16)),
        "margin": int(inference.get("margin", 0)) if spec.valid_padding else 0,
        "output": "logits" if not is_ensemble else "log-probabilities",
        "calibrated": any(o and any(float(v) != 0.0 for v in o) for o in offsets),
        "source_sha256": source_sha256,
        "models": [{"name": m["model"]["name"], "options": m["model"]["options"],
                    "in_channels": int(m["model"]["in_channels"]),
                    "context_slices": int(m["model"].get("context_slices", 1))} for m in members],
    }
    if spec.spatial_dims == 3:
        div = getattr(skeleton(meta["models"][0], len(meta["classes"])), "divisor", None)
        meta["divisor_z"] = int(div[0]) if isinstance(div, (tuple, list)) else 1
    if is_ensemble:
        meta["channels"] = [list(c) for c in build_export_network(ckpt, on_meta=True).channels]
        meta["method"] = ckpt["method"]
        meta["weights"] = [float(w) for w in ckpt["weights"]]
        meta["member_names"] = list(ckpt.get("member_names") or [])
    return meta


def halo(meta: dict[str, Any]) -> int:
    """In-plane pixels each side of a tile the network needs for an exact centre (the receptive-field radius;
    valid-padding: the output margin)."""
    if meta.get("margin"):
        return int(meta["margin"])
    radius = meta.get("receptive_radius")
    return int(radius) if radius is not None else int(math.ceil(min(meta["window_3d"][1:]) / 4))
