"""``emseg predict``: a model, an input image, an output label image."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from emseg.inference._predictor import Predictor

logger = logging.getLogger(__name__)

__all__ = ["predict", "write_probabilities"]

#: Inputs larger than this (voxels) must go to a .zarr output (blockwise): labels and probabilities of a
#: whole volume held in memory would not fit.
IN_MEMORY_LIMIT = 2**31


def write_probabilities(path: str | os.PathLike, probs: np.ndarray, classes: list[str], *, is_2d: bool, overwrite: bool) -> None:
    """Write ``(K, Z, Y, X)`` probabilities atomically, one channel per class.

    ``.tif``: an ImageJ hyperstack ``(Z, C, Y, X)`` (Fiji shows one channel per
    class); ``.zarr`` / ``.h5``: one array per class name inside the container.
    """
    import tifffile

    from emseg.io import atomic_output, write_image

    path = Path(path)
    text = str(path)
    if text.lower().endswith((".tif", ".tiff")):
        with atomic_output(path, overwrite=overwrite) as tmp:
            tifffile.imwrite(
                tmp, np.ascontiguousarray(probs.transpose(1, 0, 2, 3)), imagej=True,
                metadata={"axes": "ZCYX", "Labels": list(classes)}, compression="zlib",
            )
        return
    if text.lower().endswith(".zarr"):
        inner = "{tmp}/{name}"
    elif text.lower().endswith((".h5", ".hdf5", ".hdf")):
        inner = "{tmp}:{name}"
    else:
        raise ValueError(f"--probabilities {path}: use a .tif, .zarr or .h5 path (one channel/array per class)")
    with atomic_output(path, overwrite=overwrite) as tmp:
        for k, name in enumerate(classes):
            write_image(inner.format(tmp=tmp, name=name), probs[k, 0] if is_2d else probs[k])


def predict(
    model: str | os.PathLike | Predictor,
    image: str | os.PathLike,
    output: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    precision: str = "auto",
    tta: bool = False,
    **blockwise: Any,
) -> Path:
    """Segment ``image`` with ``model`` and write a label image to ``output``.

    Args:
        model: a run directory, a ``model.pt`` file or a :class:`Predictor`.
        image: input 2-D image or ``(Z, Y, X)`` stack, any format of :mod:`emseg.io`.
        output: label image path; the format follows the suffix. A 2-D input
            gives a 2-D output. Written under a temporary name and renamed when
            complete.
        probabilities: optional path for class probabilities (see
            :func:`write_probabilities`).
        overwrite: replace existing outputs.
        progress: show a progress bar (only on a terminal).
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        tta: average over the image and its flips (4x slower, usually a little more accurate).
        **blockwise: options of :func:`emseg.inference.predict_blockwise` (``block``,
            ``workers``, ``threads``, ``scheduler``, ``resume``, ``ome_zarr``, ``zarr_format``,
            ``overlap``, ``window``, ``batch_size``, ``jit``, ``calibrated``: False ignores the
            checkpoint's calibration offsets).  A ``.zarr`` output (without
            ``probabilities``) is always predicted block by block, resumably.

    Returns:
        The output path.
    """
    from emseg._progress import progress_bar
    from emseg.io import open_image, write_image

    output = Path(output)
    blockwise = {k: v for k, v in blockwise.items() if v is not None}
    blockwise.setdefault("overlap", "auto")  # from the receptive field, in memory and blockwise alike
    if str(output).lower().endswith(".zarr") and probabilities is None:
        from emseg.inference._blockwise import predict_blockwise

        return predict_blockwise(model, image, output, overwrite=overwrite, progress=progress, precision=precision,
                                 tta=tta, **blockwise)
    predictor_keys = ("overlap", "window", "batch_size", "jit", "calibrated")
    engine_only = sorted(k for k, v in blockwise.items() if k not in predictor_keys and v)
    if engine_only:
        raise ValueError(f"{', '.join(engine_only)} need blockwise prediction: write the labels to a .zarr store "
                         f"(got output {output}{' and --probabilities' if probabilities else ''})")
    for path in (output, probabilities):
        if path is not None and Path(str(path).split(":")[0]).exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    predictor = model if isinstance(model, Predictor) else Predictor.from_checkpoint(
        model, precision=precision, tta=tta, **{k: v for k, v in blockwise.items() if k in predictor_keys})
    start = time.perf_counter()
    with open_image(image) as data:
        volume = data.array
        if int(np.prod(volume.shape)) > IN_MEMORY_LIMIT:
            raise ValueError(f"{image} has {int(np.prod(volume.shape)):,} voxels, too many to segment in memory for "
                             f"{output}; write to a .zarr store instead (blockwise, resumable, flat memory)")
        with progress_bar("Segmenting", total=volume.shape[0], unit="slice", enabled=progress) as advance:
            labels, probs = predictor.predict_volume(volume, probabilities=probabilities is not None, progress=advance)
        is_2d, voxel_size = data.is_2d, data.voxel_size
    write_image(output, labels[0] if is_2d else labels, voxel_size=voxel_size, overwrite=overwrite)
    if probabilities is not None:
        write_probabilities(probabilities, probs, predictor.classes, is_2d=is_2d, overwrite=overwrite)
    elapsed = time.perf_counter() - start
    logger.info("segmented %s (%s voxels) in %.1f s -> %s", image, labels.size, elapsed, output)
    return output
