"""``emseg predict``: a model, an input image, an output label image."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emseg._progress import progress_bar
from emseg.inference._outputs import (
    check_distinct_paths,
    check_finite,
    check_options,
    check_writable,
    image_location,
    write_failure,
)
from emseg.inference._postprocess import check_postprocess, postprocess_labels, postprocess_record
from emseg.inference._predictor import Predictor
from emseg.inference._route import AGREEMENT_THRESHOLD, MAX_MEMORY_GB, calibrate_recorded, describe, engine_route
from emseg.inference._run_state import read_run_metadata
from emseg.io import (
    atomic_output,
    discard,
    open_image,
    probabilities_format,
    remove_stale_temporaries,
    write_image,
    write_probabilities,
)

logger = logging.getLogger(__name__)

__all__ = ["predict", "predict_with_route", "write_probabilities"]

#: Inputs larger than this (voxels) must go to a .zarr output (blockwise): labels and probabilities of a
#: whole volume held in memory would not fit.
IN_MEMORY_LIMIT = 2**31


def predict(model: str | os.PathLike | Predictor, image: str | os.PathLike, output: str | os.PathLike,
            **options: Any) -> Path:
    """Segment ``image`` with ``model`` and write a label image to ``output``.

    The keyword options (all optional, keyword-only) are those of :func:`predict_with_route`, described here.

    Args:
        model: a run directory, a ``model.pt`` file or a :class:`Predictor`.
        image: input 2-D image or ``(Z, Y, X)`` stack, any format of :mod:`emseg.io`.
        output: label image path; the format follows the suffix. A 2-D input
            gives a 2-D output. Written under a temporary name and renamed when
            complete.
        probabilities: optional path for class probabilities (see
            :func:`emseg.io.write_probabilities`).
        overwrite: replace existing outputs.
        progress: show a progress bar (only on a terminal).
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        tta: average over the image and its flips (4x slower, usually a little more accurate).
        median: post-processing, a majority (mode) filter of this odd window size over the labels
            (for two classes the median filter); see :func:`emseg.inference.majority_filter`.
        min_size: post-processing after ``median``: connected components of each foreground class
            (not class 0) below this many voxels are removed, their voxels given to the class they
            share most of their border with; see :func:`emseg.inference.remove_small_objects`.
        post_3d: post-process the stack as a contiguous volume (3-D window and 3-D components);
            default: each slice on its own (2-D), right for sections that are not contiguous.
            Post-processing changes the labels only, not ``probabilities``; it runs in memory, so a
            ``.zarr`` output predicted block by block refuses it. The options are stored in a
            ``.zarr``/``.h5`` output's attributes (``emseg.postprocess``).
        **blockwise: options of :func:`emseg.inference.predict_blockwise` (``block``,
            ``workers``, ``threads``, ``scheduler``, ``resume``, ``ome_zarr``, ``zarr_format``,
            ``io_threads``, ``overlap``, ``window``, ``batch_size``, ``jit``, ``calibrated``: False ignores
            the checkpoint's calibration offsets; ``route``, ``agreement``, ``max_memory_gb``: see
            :func:`predict_blockwise`, in memory too, where the route's threads become this process's torch
            threads).  A ``.zarr`` output (without ``probabilities``) is always predicted block by block,
            resumably.

    Returns:
        The output path.

    Raises:
        ValueError: an output that is the input (or the other output), option values out of range,
            NaN or inf in a float image, ...: checked before any work, nothing is written.
        OSError: an output folder that cannot be written (checked first) or a write that fails (a
            full disk): no output is left behind, the message names the output.
    """
    return predict_with_route(model, image, output, **options)[0]


def predict_with_route(
    model: str | os.PathLike | Predictor,
    image: str | os.PathLike,
    output: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    precision: str = "auto",
    tta: bool = False,
    median: int | None = None,
    min_size: int | None = None,
    post_3d: bool = False,
    **blockwise: Any,
) -> tuple[Path, dict[str, Any] | None]:
    """:func:`predict` (its docstring describes the arguments), also returning the record of the route it ran
    (None: no route was resolved).

    The record is what a ``.zarr`` output stores as ``emseg.route`` (see :func:`describe_route`); for an
    in-memory prediction it is returned only.  :func:`emseg.inference.predict_many` reuses a tuned route
    this way for the next volumes of the same slice shape.
    """
    output = Path(output)
    blockwise = {k: v for k, v in blockwise.items() if v is not None}
    check_options(**{k: blockwise.get(k) for k in ("window", "batch_size", "workers", "threads")})
    check_distinct_paths(image, output, probabilities)
    check_postprocess(median=median, min_size=min_size)
    post = postprocess_record(median=median, min_size=min_size, per_slice=not post_3d)
    if post_3d and post is None:
        raise ValueError("--post-3d chooses 3-D post-processing, but there is none: add --median 3 and/or "
                         "--min-size N, or drop --post-3d")
    blockwise.setdefault("overlap", "auto")  # from the receptive field, in memory and blockwise alike
    to_zarr = str(output).lower().endswith(".zarr")
    if to_zarr and probabilities is None:
        from emseg.inference._blockwise import predict_blockwise

        if post is not None:
            flags = " and ".join(f for f, v in (("--median", median), ("--min-size", min_size)) if v)
            raise ValueError(f"{flags} post-process the whole label map in memory, but a .zarr output ({output}) is "
                             "predicted block by block, where objects cross block borders: write the labels to a "
                             ".tif or .h5 output (in memory, up to 2^31 voxels) to post-process them, or drop "
                             f"{flags}")

        path = predict_blockwise(model, image, output, overwrite=overwrite, progress=progress, precision=precision,
                                 tta=tta, **blockwise)
        return path, (read_run_metadata(path) or {}).get("route")
    route, agreement = blockwise.pop("route", None), blockwise.pop("agreement", AGREEMENT_THRESHOLD)
    max_memory_gb = blockwise.pop("max_memory_gb", MAX_MEMORY_GB)
    predictor_keys = ("overlap", "window", "batch_size", "jit", "calibrated")
    engine_only = sorted(k for k, v in blockwise.items() if k not in predictor_keys and v)
    explicit = [f"--{k.replace('_', '-')}" for k in ("window", "batch_size", "jit") if blockwise.get(k)]
    explicit += ["--precision"] if precision != "auto" else []
    if route not in (None, "default") and (explicit or isinstance(model, Predictor)):
        raise ValueError(f"--route {route} sets the precision, engine, window and batch size itself: drop "
                         f"{', '.join(explicit) or 'the predictor object (give a model path)'}, or drop --route")
    if explicit or isinstance(model, Predictor):
        route = "default"
    if engine_only and to_zarr:  # a .zarr output with --probabilities: predicted in memory
        flags = ", ".join("--" + k.replace("_", "-") for k in engine_only)
        raise ValueError(f"--probabilities are computed in memory, not block by block, so {flags} cannot apply: "
                         f"drop {flags} to write {output} and {probabilities} in memory, or drop --probabilities "
                         f"to predict {output} blockwise (resumable, flat memory)")
    if engine_only:
        raise ValueError(f"{', '.join(engine_only)} need blockwise prediction: write the labels to a .zarr store "
                         f"(got output {output}{' and --probabilities' if probabilities else ''})")
    if probabilities is not None:
        probabilities_format(probabilities)
    for path in (output, probabilities):
        if path is not None and Path(str(path).split(":")[0]).exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    check_writable(output, "labels output")
    if probabilities is not None:
        check_writable(probabilities, "--probabilities output")
    for path in (output, probabilities):  # hidden temporaries of an earlier run of this command killed mid-write
        if path is not None:
            file = Path(str(path).split(":")[0])
            remove_stale_temporaries(file.parent, names=[file.name])
    predictor = model if isinstance(model, Predictor) else Predictor.from_checkpoint(
        model, precision=precision, tta=tta, **{k: v for k, v in blockwise.items() if k in predictor_keys})
    if to_zarr:
        logger.info("--probabilities: predicting %s in memory (blockwise prediction writes labels only)", output)
    start = time.perf_counter()
    with open_image(image) as data:
        volume = data.array
        if int(np.prod(volume.shape)) > IN_MEMORY_LIMIT:
            fix = ("drop --probabilities and write the labels to a .zarr store (blockwise, resumable, flat memory)"
                   if probabilities is not None else "write to a .zarr store instead (blockwise, resumable, flat memory)")
            raise ValueError(f"{image} has {int(np.prod(volume.shape)):,} voxels, too many to segment in memory for "
                             f"{output}; {fix}")
        check_finite(volume, image)
        threads_before = torch.get_num_threads()
        record = None
        if route != "default":  # in memory the route's threads are this process's torch threads
            chosen, record, options = engine_route(
                route, load=lambda **o: Predictor.from_checkpoint(model, **o), overlap=blockwise["overlap"],
                options={"precision": precision, "tta": tta,
                         **{k: v for k, v in blockwise.items() if k in predictor_keys}},
                volume=volume, z=volume.shape[0] // 2, threshold=agreement, max_memory_gb=max_memory_gb)
            logger.info("%s", describe(record))
            if chosen is not None:
                predictor = Predictor.from_checkpoint(model, **options)
                calibrate_recorded(predictor, chosen, record, volume)
                torch.set_num_threads(chosen.threads)
        try:
            with progress_bar("Segmenting", total=volume.shape[0], unit="slice", enabled=progress) as advance:
                labels, probs = predictor.predict_volume(volume, probabilities=probabilities is not None,
                                                         progress=advance)
        finally:
            torch.set_num_threads(threads_before)
        is_2d, voxel_size = data.is_2d, data.voxel_size
    if post is not None:
        t_post = time.perf_counter()
        labels = postprocess_labels(labels, median=median, min_size=min_size, per_slice=not post_3d)
        logger.info("post-processed %s (%s) in %.1f s", output, post, time.perf_counter() - t_post)
    _write_outputs(output, labels[0] if is_2d else labels, voxel_size=voxel_size, overwrite=overwrite,
                   probabilities=probabilities, probs=probs, classes=predictor.classes, is_2d=is_2d)
    if post is not None:
        _record_postprocess(output, post)
    elapsed = time.perf_counter() - start
    logger.info("segmented %s (%s voxels) in %.1f s -> %s", image, labels.size, elapsed, output)
    return output, record


def _record_postprocess(output: Path, post: dict[str, Any]) -> None:
    """Store the post-processing options as attribute ``emseg`` -> ``postprocess`` of a zarr/HDF5 output.

    TIFF and PNG outputs keep no attributes (the options are in the log only).
    """
    file, inner = image_location(output)
    text = str(file).lower()
    if text.endswith(".zarr"):
        import zarr

        node = zarr.open(str(file), mode="r+", path="/".join(inner)) if inner else zarr.open(str(file), mode="r+")
    elif text.endswith((".h5", ".hdf5", ".hdf")):
        import h5py

        with h5py.File(file, "r+") as h5:
            node = h5["/".join(inner) or "data"]
            meta = json.loads(node.attrs.get("emseg", "{}"))
            node.attrs["emseg"] = json.dumps({**meta, "postprocess": post})
        return
    else:
        return
    meta = dict(node.attrs.get("emseg", {}))
    node.attrs["emseg"] = {**meta, "postprocess": post}


def _write_outputs(output: Path, labels: np.ndarray, *, voxel_size, overwrite: bool, probabilities, probs,
                   classes: list[str], is_2d: bool) -> None:
    """Write the labels and the probabilities so that a failure or a kill leaves neither looking finished.

    The labels go to a hidden temporary first, the probabilities are written (atomically), and only
    then are the labels renamed into place; a failure discards the temporary and names the output it
    happened on (a full disk: where to free space).  Labels inside a container (``file.h5:labels``)
    cannot be staged that way: they are written first and removed again if the probabilities fail
    and this call created their file.
    """
    labels_file, inner = image_location(output)
    if probabilities is None:
        try:
            write_image(output, labels, voxel_size=voxel_size, overwrite=overwrite)
        except OSError as err:
            raise write_failure(err, output, "labels output", kept="Nothing was written") from None
        return
    if not inner:
        try:
            with atomic_output(labels_file, overwrite=overwrite) as staged:
                write_image(staged, labels, voxel_size=voxel_size, overwrite=True)  # failures: the except below
                try:
                    write_probabilities(probabilities, probs, classes, is_2d=is_2d, overwrite=overwrite)
                except OSError as err:
                    raise write_failure(err, probabilities, "--probabilities output",
                                        kept=f"The labels {output} were not written either") from None
        except OSError as err:  # write_failure passes its own errors through
            raise write_failure(err, output, "labels output", kept="Nothing was written") from None
        return
    created = not (labels_file.exists() or labels_file.is_symlink())
    try:
        write_image(output, labels, voxel_size=voxel_size, overwrite=overwrite)
    except OSError as err:
        raise write_failure(err, output, "labels output", kept="Nothing was written") from None
    try:
        write_probabilities(probabilities, probs, classes, is_2d=is_2d, overwrite=overwrite)
    except BaseException as err:
        if created:
            discard(labels_file)
            kept = f"The labels {output} were removed again, so no half-finished result is left"
        else:
            kept = f"The labels {output} were written"
        if isinstance(err, OSError):
            raise write_failure(err, probabilities, "--probabilities output", kept=kept) from None
        raise
