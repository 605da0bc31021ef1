"""The bioimage.io package (model spec 0.5, written and validated with ``bioimageio.spec``, tested with
``bioimageio.core``): rdf.yaml, TorchScript and PyTorch state-dict weights (with the architecture source),
test tensors from a real EM tile, a cover image and a README, zipped."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from emseg._version import __version__
from emseg.constants import BIOIMAGEIO_METADATA, BIOIMAGEIO_STATE
from emseg.export._network import halo
from emseg.models import skeleton

logger = logging.getLogger(__name__)

__all__ = ["PYDANTIC_FIX", "check_names", "check_pydantic", "write_bioimageio"]

ARCHITECTURE_FILE = "emseg_architecture.py"
ARCHITECTURE_SOURCE = '''"""Architecture of an emseg export (pytorch_state_dict weights): needs `pip install emseg`.

The TorchScript weights of the same package run without emseg.
"""

from emseg.models import network_from_metadata


def EmsegNetwork(metadata):
    """The exported network (one registry network, or an ensemble of them) described by ``metadata``."""
    return network_from_metadata(metadata)
'''

#: Papers of the methods (the network families and emseg's ensemble), cited in the package.
CITATIONS = {
    "unet": ("Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
             "MICCAI 2015.", "10.1007/978-3-319-24574-4_28"),
    "unet3d": ("Cicek et al. 3D U-Net: Learning Dense Volumetric Segmentation from Sparse Annotation. MICCAI 2016.",
               "10.1007/978-3-319-46723-8_49"),
    "resnet": ("He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016.",
               "10.1109/CVPR.2016.90"),
    "hybrid": ("Guay et al. Dense cellular segmentation for EM using 2D-3D neural network ensembles. "
               "Scientific Reports 2021.", "10.1038/s41598-020-79564-5"),
    "monai": ("Cardoso et al. MONAI: An open-source framework for deep learning in healthcare. 2022.",
              "10.48550/arXiv.2211.02701"),
}


def _citations(meta: dict[str, Any]) -> list[tuple[str, str]]:
    keys = ["unet", "monai"]
    for model in meta["models"]:
        name = model["name"]
        if name.startswith("unet3d"):
            keys.append("unet3d")
        if "resnet" in name:
            keys.append("resnet")
        if name == "hybrid2d3d":
            keys.append("hybrid")
    return [CITATIONS[k] for k in dict.fromkeys(keys)]


def _cover(raw: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Side by side: the raw tile and the predicted labels over it (PNG)."""
    from PIL import Image

    image = raw.astype(np.float32)
    lo, hi = np.percentile(image, (1, 99))
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    palette = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.float32) / 255
    colours = palette[labels % len(palette)]
    overlay = np.where((labels > 0)[..., None], 0.5 * grey[..., None] + 0.5 * colours, grey[..., None])
    both = np.concatenate([np.repeat(grey[..., None], 3, axis=2), overlay], axis=1)
    Image.fromarray((both * 255).astype(np.uint8)).save(path)


def _readme(meta: dict[str, Any], ckpt: dict[str, Any], name: str, tile_halo: int) -> str:
    training = ckpt.get("training") or {}
    members = ckpt.get("members") or [ckpt]
    lines = [f"# {name}", "",
             f"Semantic segmentation of electron microscopy exported by emseg {__version__} (`emseg export`).", "",
             "## Classes", ""]
    lines += [f"- channel {k}: {c}" for k, c in enumerate(meta["classes"])]
    lines += ["", "## Input", "",
              f"- raw intensities normalised as (x - {meta['normalization']['mean']:.4f}) / "
              f"{meta['normalization']['std']:.4f} (the training data's mean and standard deviation)",
              f"- {'3-D windows (z, y, x)' if meta['spatial_dims'] == 3 else 'one slice'}"
              + (f" with {meta['context_slices']} neighbouring slices as channels (centre slice in the middle)"
                 if meta["context_slices"] > 1 else ""),
              f"- tiles: y and x multiples of {meta['divisor']}; halo {tile_halo} px "
              + ("(the valid-padding margin the network crops itself)" if meta["margin"] else
                 f"(readers pad each tile by it; the receptive-field radius emseg measures is {halo(meta)} px"
                 + (", more than the test tile allows" if tile_halo < halo(meta) else "")
                 + f"; a multiple of {meta['divisor']}, so padding keeps the pooling grid)")
              + "; emseg predicts with windows of "
              + " x ".join(map(str, meta["window_3d"] if meta["spatial_dims"] == 3 else meta["window"])),
              "- output: class probabilities (softmax of the network's output)", "",
              "## How it was trained", ""]
    if meta["kind"] == "ensemble":
        lines += [f"An ensemble ({meta['method']}) of {len(members)} networks, combined in one network: the "
                  f"members' probabilities are averaged with weights {meta['weights']}.", ""]
    for i, member in enumerate(members):
        info = member.get("training") or {}
        config = info.get("config") or {}
        lines += [f"### {'member ' + str(i) + ': ' if len(members) > 1 else ''}{member['model']['name']}", "",
                  f"- options: `{json.dumps(member['model']['options'])}`"]
        if config.get("data"):
            lines.append(f"- data: `{json.dumps(config['data'], default=str)}`")
        if config.get("training"):
            lines.append(f"- training: `{json.dumps(config['training'], default=str)}`")
        if info.get("epoch") is not None:
            lines.append(f"- epochs: {info['epoch']}")
        lines.append("")
    lines += ["## Validation", "", "Scores on the validation data emseg held out while training (mean IoU over "
              "the classes):", ""]
    scores = [(f"member {i} ({m['model']['name']})" if len(members) > 1 else m["model"]["name"],
               (m.get("training") or {})) for i, m in enumerate(members)]
    if meta["kind"] == "ensemble":
        scores.append(("the ensemble", training))
    for label, info in scores:
        found = [f"{key.replace('_', ' ')} {info[key]}" for key in ("val_mean_iou", "best_val_mean_iou")
                 if info.get(key) is not None]
        lines.append(f"- {label}: {', '.join(found) if found else 'not recorded in the model.pt'}")
    lines += ["", "The package's test output was computed by emseg from a tile of a real EM crop; bioimage.io's "
              "model test reproduces it from the test input.", ""]
    lines += ["## Use", "",
              "- ilastik (Neural Network Classification), deepImageJ, Fiji, QuPath, napari: open this zip.",
              "- Python: `bioimageio.core.predict(model='this.zip', inputs=...)`.",
              "- emseg: `emseg predict this.zip image.tif labels.tif` (same labels as the original model).", ""]
    return "\n".join(lines)


def _axes(meta: dict[str, Any], channels_in: int, tile: tuple[int, ...]) -> tuple[list[Any], list[Any], int]:
    """Input and output axes of the package (tile ``(y, x)``: the test tensor's in-plane size) and the halo."""
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        Identifier,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
    )

    divisor, margin = int(meta["divisor"]), int(meta["margin"])
    pad = halo(meta)
    names = ["z", "y", "x"] if meta["spatial_dims"] == 3 else ["y", "x"]
    if margin:
        skel = skeleton(meta["models"][0], len(meta["classes"]))
        smallest = skel.valid_input_size(2 * margin + 1)
        sizes = {n: ParameterizedSize(min=smallest, step=int(skel.alignment)) for n in names}
    else:
        # The halo is a multiple of the divisor: readers pad each tile by it, and padding by anything else shifts
        # the pooling grid, which changes the output everywhere, not only near the tile's edge. A tile keeps at
        # least one divisor step inside its halo; bioimage.io also wants the test tensor (a real crop) to be a
        # valid size, so a receptive field wider than that crop allows is capped (emseg's own tiling caps its
        # overlap at half a window).
        pad = -(-pad // divisor) * divisor
        smallest = 2 * pad + divisor
        if smallest > min(tile):
            smallest = max(divisor, min(tile) // divisor * divisor)
            pad = (smallest - divisor) // 2 // divisor * divisor
        sizes = {n: ParameterizedSize(min=smallest, step=divisor) for n in names}
        if meta["spatial_dims"] == 3:
            z_step = int(meta.get("divisor_z") or 1)
            sizes["z"] = ParameterizedSize(min=z_step, step=z_step)
    channel_names = ([f"slice{k - meta['context_slices'] // 2:+d}" if k != meta["context_slices"] // 2 else "slice0"
                      for k in range(channels_in)] if meta["spatial_dims"] == 2 else ["raw"])
    inputs = [BatchAxis(), ChannelAxis(channel_names=[Identifier(c.replace("+", "p").replace("-", "m"))
                                                      for c in channel_names])]
    inputs += [SpaceInputAxis(id=AxisId(n), size=sizes[n]) for n in names]
    outputs = [BatchAxis(), ChannelAxis(channel_names=[Identifier(c) for c in meta["classes"]])]
    for n in names:
        ref = SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId(n), offset=-2 * margin)
        if margin or n == "z" or not pad:
            outputs.append(SpaceOutputAxis(id=AxisId(n), size=ref))
        else:
            outputs.append(SpaceOutputAxisWithHalo(id=AxisId(n), size=SizeReference(tensor_id=TensorId("raw"),
                                                                                      axis_id=AxisId(n)),
                                                   halo=pad))
    return inputs, outputs, pad


def write_bioimageio(net: torch.nn.Module, meta: dict[str, Any], ckpt: dict[str, Any], path: Path, *,
                     raw: np.ndarray, inputs: torch.Tensor, reference: torch.Tensor, predictor: Any,
                     name: str | None, authors: list[str] | None) -> dict[str, Any]:
    """Write, validate and test the package ``path`` (a .zip); returns ``max_prob_diff`` and ``test``."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        Author,
        CiteEntry,
        FileDescr,
        FixedZeroMeanUnitVarianceDescr,
        FixedZeroMeanUnitVarianceKwargs,
        InputTensorDescr,
        ModelDescr,
        OutputTensorDescr,
        PytorchStateDictWeightsDescr,
        SoftmaxDescr,
        SoftmaxKwargs,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )
    from bioimageio.spec.model.v0_5 import ArchitectureFromFileDescr

    from emseg.export._export import compare
    from emseg.export._formats import trace_frozen

    name = name or f"emseg {meta['models'][0]['name']}{' ensemble' if meta['kind'] == 'ensemble' else ''} " \
                   f"({len(meta['classes'])} classes)"
    with torch.no_grad():
        logits = reference.float()
        probs = torch.softmax(logits, dim=1).numpy().astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="emseg-bioimageio-") as folder:
        folder = Path(folder)
        test_in = folder / "test_input.npy"
        test_out = folder / "test_output.npy"
        np.save(test_in, (raw[None] if meta["spatial_dims"] == 2 else raw[None, None]).astype(np.float32))
        np.save(test_out, probs)
        # sample tensors (FAIR: a viewable image of each tensor): the same tile and its probabilities, as TIFF
        sample_in, sample_out = folder / "sample_input.tif", folder / "sample_output.tif"
        tifffile.imwrite(sample_in, np.load(test_in))
        tifffile.imwrite(sample_out, probs)
        state = folder / BIOIMAGEIO_STATE
        torch.save(net.state_dict(), state)
        scripted = folder / "weights_torchscript.pt"
        frozen = trace_frozen(net, inputs)
        torch.jit.save(frozen, str(scripted))
        with torch.no_grad():
            diff = compare(reference, frozen(inputs).numpy(), "the TorchScript weights")
        arch = folder / ARCHITECTURE_FILE
        arch.write_text(ARCHITECTURE_SOURCE)
        (folder / BIOIMAGEIO_METADATA).write_text(json.dumps(meta, sort_keys=True, indent=1))
        centre = raw[raw.shape[0] // 2] if raw.ndim == 3 else raw
        label_img = probs[0].argmax(0)
        if label_img.ndim == 3:
            label_img = label_img[label_img.shape[0] // 2]
        crop = (centre.shape[0] - label_img.shape[0]) // 2  # a valid-padding network's output lacks the margin
        centre = centre[crop:crop + label_img.shape[0], crop:crop + label_img.shape[1]]
        _cover(centre, label_img, folder / "cover.png")
        in_axes, out_axes, tile_halo = _axes(meta, int(raw.shape[0]) if meta["spatial_dims"] == 2 else 1,
                                             tuple(int(s) for s in raw.shape[-2:]))
        readme = folder / "README.md"
        readme.write_text(_readme(meta, ckpt, name, tile_halo))
        norm = meta["normalization"]
        tag_dims = "3d" if meta["spatial_dims"] == 3 else "2d"
        descr = ModelDescr(
            name=name,
            description=f"Semantic segmentation of electron microscopy into {', '.join(meta['classes'])} "
                        f"(emseg {meta['kind']}, {meta['models'][0]['name']}).",
            authors=[Author(name=a) for a in (authors or ["emseg user"])],
            cite=[CiteEntry(text=text, doi=doi) for text, doi in _citations(meta)],
            license="BSD-3-Clause",
            tags=["electron-microscopy", "semantic-segmentation", "emseg", tag_dims, "pytorch", "unet"],
            documentation=FileDescr(source=readme),
            covers=[FileDescr(source=folder / "cover.png")],
            attachments=[FileDescr(source=folder / BIOIMAGEIO_METADATA)],
            inputs=[InputTensorDescr(
                id=TensorId("raw"), axes=in_axes, test_tensor=FileDescr(source=test_in),
                sample_tensor=FileDescr(source=sample_in),
                description="raw EM intensities" + (f", {meta['context_slices']} slices centred on the one "
                                                    "segmented" if meta["context_slices"] > 1 else ""),
                preprocessing=[FixedZeroMeanUnitVarianceDescr(
                    kwargs=FixedZeroMeanUnitVarianceKwargs(mean=float(norm["mean"]), std=float(norm["std"])))],
            )],
            outputs=[OutputTensorDescr(
                id=TensorId("probabilities"), axes=out_axes, test_tensor=FileDescr(source=test_out),
                sample_tensor=FileDescr(source=sample_out),
                description="class probabilities; classes: " + ", ".join(meta["classes"]),
                postprocessing=[SoftmaxDescr(kwargs=SoftmaxKwargs(axis="channel"))],
            )],
            weights=WeightsDescr(
                pytorch_state_dict=PytorchStateDictWeightsDescr(
                    source=state, pytorch_version=Version(torch.__version__.split("+")[0]),
                    architecture=ArchitectureFromFileDescr(source=arch, callable="EmsegNetwork",
                                                           kwargs={"metadata": meta}),
                ),
                torchscript=TorchscriptWeightsDescr(source=scripted,
                                                    pytorch_version=Version(torch.__version__.split("+")[0]),
                                                    parent="pytorch_state_dict"),
            ),
            config={"emseg": {"version": __version__, "kind": meta["kind"], "source_sha256": meta["source_sha256"]}},
        )
        built = folder / "package.zip"
        save_bioimageio_package(descr, output_path=built)
        test = _validate_and_test(built)
        shutil.copyfile(built, path)
    return {"max_prob_diff": diff, "test": test}


#: bioimageio.spec 0.5.12 (what bioimageio.core 0.11 requires) serialises through an older pydantic call that
#: pydantic 2.14 rejects; the export extra pins ``pydantic<2.14``.
PYDANTIC_FIX = 'pip install "pydantic<2.14"'


def check_pydantic() -> None:
    """Refuse, before any work, a pydantic that the installed bioimageio.spec cannot write packages with."""
    import pydantic

    major, minor = (int(p) for p in pydantic.VERSION.split(".")[:2])
    if (major, minor) >= (2, 14):
        spec = _version("bioimageio.spec")
        if spec is not None and spec < (0, 5, 13):
            raise RuntimeError(f"bioimage.io export: bioimageio.spec {'.'.join(map(str, spec))} cannot write packages "
                               f"with pydantic {pydantic.VERSION}; run {PYDANTIC_FIX} (the export extra's pin), "
                               "then export again")


#: Characters bioimage.io allows in a model name (5 to 128 of them).
NAME_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")


def check_names(name: str | None, authors: list[str] | None) -> None:
    """Refuse, before any work, a --name or --author the bioimage.io model spec does not accept."""
    if name is not None:
        bad = sorted(set(name) - NAME_CHARACTERS)
        if bad or not 5 <= len(name) <= 128:
            problem = (f"contains {' '.join(repr(c) for c in bad)}" if bad else f"has {len(name)} characters")
            raise ValueError(f"--name {name!r} {problem}: a bioimage.io model name has 5 to 128 letters, digits, "
                             "spaces, '_', '+', '-', '(' or ')'; pass another --name")
    for author in authors or []:
        if not author.strip() or "/" in author:
            raise ValueError(f"--author {author!r}: a bioimage.io author is a non-empty name without '/'; "
                             "pass the person's name")


def _version(dist: str) -> tuple[int, ...] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in version(dist).split(".")[:3] if p.isdigit())
    except PackageNotFoundError:
        return None


def _validate_and_test(package: Path) -> str:
    """``bioimageio.spec`` validation and ``bioimageio.core``'s model test (its test tensors reproduce)."""
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    described = load_description(package)
    summary = described.validation_summary
    if summary.status not in ("passed", "valid-format"):
        raise RuntimeError(f"the bioimage.io package does not validate: {_problems(summary)}; not written")
    result = test_model(package)
    if result.status != "passed":
        raise RuntimeError(f"bioimage.io model test failed: {_problems(result)}; not written")
    return str(result.status)


def _problems(summary: Any) -> str:
    errors = []
    for detail in getattr(summary, "details", []):
        for err in getattr(detail, "errors", []):
            errors.append(f"{'.'.join(map(str, getattr(err, 'loc', ())))}: {getattr(err, 'msg', err)}")
        if getattr(detail, "status", "passed") == "failed" and not getattr(detail, "errors", None):
            errors.append(str(getattr(detail, "name", detail)))
    return "; ".join(errors[:5]) or str(summary.status)
