"""Blockwise, out-of-core, resumable prediction into a chunked zarr store.

The volume is cut into blocks aligned with the output chunks.  For each block
the predictor names the input box it needs (the block plus a halo:
``context_slices // 2`` slices for 2.5-D models, the windows of the global
sliding-window grid in-plane, see :mod:`emseg.inference._tiling`), the box is
read, the block's labels are predicted and written to its own chunks, and only
then is the block marked done (an empty file ``OUTPUT/.emseg/blocks/<z>.<y>.<x>``).
A rerun skips marked blocks; a killed run leaves at worst unmarked blocks, which
are predicted again.  The store's attributes (``emseg``) record the model and its
SHA-256, the input, the block layout and ``status`` (``running`` until every
block and the optional OME-Zarr pyramid are written, then ``complete``).

Every block is computed with the same number of torch intra-op threads,
``threads`` (default 1), in this process and on each Dask worker: oneDNN's
convolutions round differently with different thread counts, so pinning it makes
serial, LocalCluster and cluster runs bit-identical (and equal to in-memory
prediction run with as many threads).  Cores are used through ``workers`` (one
process each) or ``threads`` (one process using several cores, which on a small
machine shares caches better than several processes), while reading and
writing overlap the compute.

Block choice: whole slices in-plane, blocks along z only, while a slice's
probabilities fit a memory budget (the common case); in-plane blocks otherwise.
Either way the labels equal those of in-memory prediction exactly, because the
sliding windows sit on a grid fixed by the whole slice's shape.

The engine is this module (jobs, caches, the serial and parallel runs, pyramids); the block layout is in
:mod:`emseg.inference._block_layout` and the run state (metadata, markers, resume checks) in
:mod:`emseg.inference._run_state`.

Predictor interface used (any object offering it plugs in: 3-D models, ensembles):
``classes``; ``block_input(region, shape) -> input box``;
``predict_proba_block(data, origin=, region=, shape=) -> (K, nz, ny, nx)``; optionally
``predict_labels_block`` with the same arguments ``-> (nz, ny, nx)``, used instead where present.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg._device import cpu_has_native_bf16
from emseg.inference._block_layout import (
    BlockLayout,
    VolumeBlockAdapter,
    as_block_predictor,
    block_labels,
    choose_block,
    predict_labels_block,
)
from emseg.inference._outputs import check_distinct_paths, check_finite, check_options, check_writable, write_failure
from emseg.inference._predictor import load_predictor
from emseg.inference._run_state import (
    ResumeError,
    _mark,
    _prepare_output,
    _tree_sha256,
    _update_meta,
    file_sha256,
    finished_blocks,
    read_run_metadata,
)
from emseg.io import open_image
from emseg.io import discard, remove_path
from emseg.models import resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["BlockJob", "BlockLayout", "ResumeError", "VolumeBlockAdapter", "as_block_predictor", "file_sha256",
           "predict_blockwise"]


@dataclass
class BlockJob:
    """Everything a (possibly remote) worker needs to predict and write one block; picklable."""

    model: str
    model_sha256: str
    input: str
    output: str
    labels_path: str
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    dtype: str
    is_2d: bool
    predictor_options: dict[str, Any] = field(default_factory=dict)
    loader: Callable[..., Any] | None = None
    threads: int = 1


# ----------------------------------------------------------------- per-process caches (Dask workers)

_PREDICTORS: dict[tuple, Any] = {}
_INPUTS: dict[str, Any] = {}
_OUTPUTS: dict[tuple[str, str], Any] = {}


def _cached_predictor(model: str, sha256: str, options: dict[str, Any],
                   loader: Callable[..., Any] | None = None) -> Any:
    """The predictor for ``model``, loaded once per process (keyed by path, checksum, options and loader).

    ``loader(model, **options)`` builds it (default :func:`~emseg.inference.load_predictor`; an ensemble
    passes its own), wrapped by :func:`as_block_predictor`.
    """
    # precision "auto" follows the CPU check (which EMSEG_NATIVE_BF16 can override), so the key holds its answer
    key = (model, sha256, tuple(sorted(options.items())), loader, cpu_has_native_bf16())
    if key not in _PREDICTORS:
        if loader is None:
            loader = load_predictor
        _PREDICTORS[key] = as_block_predictor(loader(model, **options))
    return _PREDICTORS[key]


def _open_input(path: str) -> Any:
    if path not in _INPUTS:
        _INPUTS[path] = open_image(path)
    return _INPUTS[path].array


def _open_output(store: str, labels_path: str) -> Any:
    key = (store, labels_path)
    if key not in _OUTPUTS:
        import zarr

        _OUTPUTS[key] = zarr.open_array(store=store, path=labels_path or None, mode="r+")
    return _OUTPUTS[key]


def write_block(array: Any, region: tuple[slice, slice, slice], labels: np.ndarray, is_2d: bool) -> None:
    if is_2d:
        array[region[1:]] = labels[0]
    else:
        array[region] = labels


def run_block(job: BlockJob, index: tuple[int, int, int]) -> tuple[tuple[int, int, int], int]:
    """Predict and write one block in this process (a Dask task); returns ``(index, voxels)``."""
    import torch

    if torch.get_num_threads() != job.threads:
        torch.set_num_threads(job.threads)  # the same on every route: the labels are then bit-identical
    predictor = _cached_predictor(job.model, job.model_sha256, job.predictor_options, job.loader)
    volume = _open_input(job.input)
    layout = BlockLayout(job.shape, job.block)
    region = layout.region(index)
    labels = predict_labels_block(predictor, lambda box: np.asarray(volume[box]), region, job.shape, job.dtype)
    write_block(_open_output(job.output, job.labels_path), region, labels, job.is_2d)
    return index, int(labels.size)


# ----------------------------------------------------------------- the engine


def predict_blockwise(
    model: str | os.PathLike | Any,
    image: str | os.PathLike,
    output: str | os.PathLike,
    *,
    block: tuple[int, int, int] | None = None,
    workers: int = 0,
    threads: int = 1,
    scheduler: str | None = None,
    resume: bool | None = None,
    overwrite: bool = False,
    ome_zarr: bool = False,
    zarr_format: int = 3,
    precision: str = "auto",
    tta: bool = False,
    overlap: float | str = "auto",
    window: tuple[int, int] | None = None,
    batch_size: int = 4,
    jit: bool = False,
    calibrated: bool = True,
    progress: bool = True,
    max_blocks: int | None = None,
    loader: Callable[..., Any] | None = None,
) -> Path:
    """Segment ``image`` block by block into the zarr store ``output`` (resumable).

    Args:
        model: run directory or ``model.pt`` (required for ``workers``/``scheduler``),
            or a predictor object offering the blockwise interface (serial only).
        image: input volume, any lazy format of :mod:`emseg.io` (zarr, OME-Zarr,
            HDF5, N5, memory-mapped TIFF, ...), ``(Z, Y, X)`` or 2-D.
        output: ``.zarr`` store for the uint8 labels (uint16 beyond 255 classes),
            chunked like the blocks.
        block: block shape ``(z, y, x)``; default from :func:`choose_block`.
        workers: 0 = this process (reads and writes overlapped with compute);
            N >= 1 = a Dask ``LocalCluster`` of N processes, one block at a time each.
        threads: torch intra-op threads per block, in this process or on each worker (default 1).
            Labels are bit-identical across routes run with the same ``threads``; on a machine
            of few cores ``workers=0, threads=<cores>`` is the fastest route (docs/BENCHMARKS.md).
        scheduler: address of an existing Dask scheduler (e.g. ``tcp://host:8786``).
        resume: None (default) continues an unfinished run of the same model,
            input and layout; True the same, saying so; False refuses an unfinished output.
        overwrite: delete an existing output first.
        ome_zarr: write an OME-Zarr (NGFF 0.4, zarr v2) multiscale label pyramid.
        zarr_format: 2 or 3 for plain zarr output.
        precision, tta, overlap, window, batch_size, jit: predictor options (``overlap="auto"``:
            from the receptive field; ``jit``: frozen TorchScript network on CPU, see
            :class:`~emseg.inference.Predictor`).
        calibrated: apply the checkpoint's logit offsets (the default); False ignores them.
        progress: progress bar with voxels/s and ETA (terminal only).
        max_blocks: stop after this many blocks (tests, benchmarks); the run stays resumable.
        loader: ``loader(model_path, **predictor options)`` builds the predictor in each process
            (default :func:`~emseg.inference.load_predictor`: a model, an ensemble or an export).

    Returns:
        The output path.

    Raises:
        ResumeError: the output is an unfinished run of a different model, input or layout.
        FileExistsError: the output exists (complete, or not an emseg run) and ``overwrite`` is False.
    """
    from emseg._version import __version__
    from emseg._progress import progress_bar

    output = Path(output)
    if not str(output).lower().endswith(".zarr"):
        raise ValueError(f"blockwise output must be a .zarr store, got {output}")
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    check_options(window=window, batch_size=batch_size, workers=workers, threads=threads)
    threads = int(threads)
    check_distinct_paths(image, output)
    check_writable(output, "labels output")
    options: dict[str, Any] = {"precision": precision, "tta": tta, "overlap": overlap, "batch_size": batch_size}
    if window is not None:
        options["window"] = tuple(int(w) for w in window)
    if jit:
        options["jit"] = True
    if not calibrated:
        options["calibrated"] = False
    if isinstance(model, (str, os.PathLike)):
        if loader is None:
            model_path = str(resolve_model_path(model).resolve())
            sha = file_sha256(model_path)
        else:
            model_path = str(Path(model).resolve())
            sha = file_sha256(model_path) if Path(model_path).is_file() else _tree_sha256(Path(model_path))
        predictor = _cached_predictor(model_path, sha, options, loader) if not (workers or scheduler) else None
        if predictor is None:
            probe = _cached_predictor(model_path, sha, options, loader)  # resolves overlap="auto" once, for the record
            options["overlap"] = _resolved_overlap(probe, overlap)
            classes = probe.classes
        else:
            options["overlap"] = _resolved_overlap(predictor, overlap)
            classes = predictor.classes
    else:
        if workers or scheduler:
            raise ValueError("workers/scheduler need the model as a path (each worker loads it), not an object")
        predictor, model_path = as_block_predictor(model), f"<{type(model).__name__}>"
        sha = getattr(model, "checksum", None) or "unknown"
        classes = predictor.classes
        options = {"overlap": _resolved_overlap(model, None)}

    with open_image(image) as data:
        shape = tuple(int(s) for s in data.array.shape)
        in_dtype, is_2d, voxel_size = str(data.array.dtype), data.is_2d, data.voxel_size
        input_text = os.fspath(image)
        input_id = str(Path(input_text).resolve()) if Path(input_text).exists() else input_text
        check_finite(data.array, image)
        blk = choose_block(predictor if predictor is not None else probe, shape, block)
        layout = BlockLayout(shape, blk)
        dtype = np.uint8 if len(classes) <= 255 else np.uint16
        out_shape, out_chunks = (shape[1:], blk[1:]) if is_2d else (shape, blk)
        meta = {
            "version": __version__, "status": "running", "model": model_path, "model_sha256": sha,
            "classes": list(classes), "input": input_id, "input_shape": list(shape), "input_dtype": in_dtype,
            "block_shape": list(blk), "n_blocks": len(layout), "predictor_options": options, "threads": threads,
            "ome_zarr": ome_zarr, "zarr_format": 2 if ome_zarr else zarr_format,
            "voxel_size": list(voxel_size) if voxel_size else None, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        created = overwrite or not output.exists()
        labels_path = _prepare_output(output, meta, resume=resume, overwrite=overwrite, shape=out_shape,
                                      chunks=out_chunks, dtype=dtype, ome=ome_zarr, zarr_format=zarr_format,
                                      remove=remove_path)
        try:
            done = finished_blocks(output)
            todo = [i for i in layout.indices() if i not in done]
            if done:
                logger.info("resuming %s: %d of %d blocks already done", output, len(layout) - len(todo), len(layout))
            if max_blocks is not None:
                todo = todo[:max_blocks]
            total_vox = sum(int(np.prod([s.stop - s.start for s in layout.region(i)])) for i in todo)
            logger.info("predicting %s %s in %d blocks of %s -> %s", input_text, shape, len(todo), blk, output)
            start = time.perf_counter()
            counted = {"vox": 0}
            with progress_bar("Segmenting", total=total_vox, unit="voxels", enabled=progress) as advance:
                def on_done(index: tuple[int, int, int], nvox: int) -> None:
                    _mark(output, index)
                    counted["vox"] += nvox
                    rate = counted["vox"] / max(time.perf_counter() - start, 1e-9) / 1e6
                    advance(nvox, status=f"{rate:.2f} MVox/s")

                if workers or scheduler:
                    from emseg.inference._dask import run_blocks_dask

                    job = BlockJob(model=model_path, model_sha256=sha, input=input_text, output=str(output),
                                   labels_path=labels_path, shape=shape, block=blk, dtype=np.dtype(dtype).name,
                                   is_2d=is_2d, predictor_options=options, loader=loader, threads=threads)
                    run_blocks_dask(job, todo, workers=workers, scheduler=scheduler, on_done=on_done)
                else:
                    import torch

                    # `threads` intra-op threads, as on each Dask worker: oneDNN convolutions round differently
                    # with different thread counts (last bit, measured 6e-8), so this keeps every route bit-identical.
                    before = torch.get_num_threads()
                    torch.set_num_threads(threads)
                    try:
                        _run_serial(predictor, data.array, output, labels_path, layout, todo, dtype, is_2d, on_done)
                    finally:
                        torch.set_num_threads(before)
            elapsed = time.perf_counter() - start
        except BaseException as err:
            _after_failure(output, err, created=created)
            raise
    if finished_blocks(output) >= set(layout.indices()):
        try:
            if ome_zarr:
                write_pyramid(output, voxel_size=voxel_size, is_2d=is_2d, chunks=out_chunks)
            _update_meta(output, status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        except OSError as err:
            raise write_failure(err, output, "labels output", kept="Every block is written: rerun the same "
                                "command to finish it") from None
        logger.info("segmented %s (%d voxels) in %.1f s (%.2f MVox/s) -> %s", input_text, int(np.prod(shape)),
                    elapsed, total_vox / max(elapsed, 1e-9) / 1e6, output)
    return output


_DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _after_failure(output: Path, err: BaseException, *, created: bool) -> None:
    """Clean up after a failed run: a store this call created with no block finished is removed (nothing
    to resume); an error writing names the store and says what is kept.  The caller re-raises ``err``
    when this returns."""
    done = len(finished_blocks(output))
    if created and not done:
        discard(output)
        kept = "Nothing was kept"
    else:
        kept = (f"{done} finished blocks are kept: rerun the same command to resume (the store's status stays "
                "'running' until every block is written)")
    if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
        raise write_failure(err, output, "labels output", kept=kept) from None


def _resolved_overlap(predictor: Any, requested: Any) -> Any:
    """The overlap actually used (``"auto"`` resolved), recorded so a resume with other settings is caught."""
    inner = getattr(predictor, "predictor", predictor)  # through VolumeBlockAdapter
    value = getattr(inner, "overlap", requested)
    return float(value) if isinstance(value, (int, float)) else value


def _run_serial(predictor: Any, volume: Any, output: Path, labels_path: str, layout: BlockLayout,
                todo: list[tuple[int, int, int]], dtype: Any, is_2d: bool,
                on_done: Callable[[tuple[int, int, int], int], None]) -> None:
    """This process: the next block is read and the previous one written while one is computed."""
    import zarr

    if not todo:
        return
    array = zarr.open_array(store=str(output), path=labels_path or None, mode="r+")
    shape = layout.shape

    def read(index):
        region = layout.region(index)
        box = predictor.block_input(region, shape)
        return region, box, np.asarray(volume[box])

    def write(index, region, labels):
        write_block(array, region, labels, is_2d)
        return index, int(labels.size)

    with cf.ThreadPoolExecutor(1, thread_name_prefix="emseg-read") as reader, \
            cf.ThreadPoolExecutor(1, thread_name_prefix="emseg-write") as writer:
        next_read = reader.submit(read, todo[0])
        pending: cf.Future | None = None
        try:
            for k, index in enumerate(todo):
                region, box, data = next_read.result()
                if k + 1 < len(todo):
                    next_read = reader.submit(read, todo[k + 1])
                labels = block_labels(predictor, data, origin=tuple(s.start for s in box), region=region,
                                      shape=shape, dtype=dtype)
                if pending is not None:
                    on_done(*pending.result())
                pending = writer.submit(write, index, region, labels)
        finally:
            if pending is not None and not pending.cancelled():
                on_done(*pending.result())


# ----------------------------------------------------------------- OME-Zarr pyramid


def downsample_mode(labels: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Most frequent label in each ``factors`` box (ties: the smaller label); edges padded by replication."""
    pad = [(0, (-s) % f) for s, f in zip(labels.shape, factors)]
    if any(p for _, p in pad):
        labels = np.pad(labels, pad, mode="edge")
    shape = []
    for s, f in zip(labels.shape, factors):
        shape += [s // f, f]
    boxes = labels.reshape(shape)
    axes = tuple(range(1, 2 * len(factors), 2))
    best = np.zeros(tuple(s // f for s, f in zip(labels.shape, factors)), labels.dtype)
    best_count = np.full(best.shape, -1, np.int32)
    for value in np.unique(labels):
        count = (boxes == value).sum(axis=axes, dtype=np.int32)
        better = count > best_count
        best[better] = value
        best_count[better] = count[better]
    return best


def pyramid_factors(voxel_size: tuple[float, float, float] | None, is_2d: bool) -> tuple[int, ...]:
    """Downsampling factors per level: 2 in y and x, and in z too when voxels are (near) isotropic."""
    if is_2d:
        return (2, 2)
    iso = voxel_size is not None and voxel_size[0] <= 1.5 * min(voxel_size[1:])
    return (2 if iso else 1, 2, 2)


def write_pyramid(output: Path, *, voxel_size: tuple[float, float, float] | None, is_2d: bool,
                  chunks: tuple[int, ...], min_size: int = 32, max_levels: int = 8) -> list[tuple[int, ...]]:
    """Add levels ``1, 2, ...`` (mode-downsampled labels) and NGFF 0.4 ``multiscales`` to an OME-Zarr store.

    Levels are computed slab by slab (bounded memory).  Returns the level shapes.
    """
    import zarr

    factors = pyramid_factors(voxel_size, is_2d)
    root = zarr.open_group(store=str(output), mode="r+", zarr_format=2)
    level = root["0"]
    shapes = [tuple(level.shape)]
    while len(shapes) < max_levels:
        nxt = tuple(math.ceil(s / f) for s, f in zip(shapes[-1], factors))
        if min(nxt[-2:]) < min_size:
            break
        name = str(len(shapes))
        if name in root:
            del root[name]
        dst = zarr.create_array(store=str(output), name=name, shape=nxt, dtype=level.dtype, fill_value=0,
                                chunks=tuple(min(c, s) for c, s in zip(chunks, nxt)), zarr_format=2,
                                chunk_key_encoding={"name": "v2", "separator": "/"}, overwrite=True)
        if is_2d:
            dst[...] = downsample_mode(np.asarray(level[...]), factors)
        else:
            step = max(factors[0], (max(1, chunks[0]) // factors[0]) * factors[0])
            for z0 in range(0, shapes[-1][0], step):
                src = np.asarray(level[z0:z0 + step])
                dst[z0 // factors[0]:(z0 // factors[0]) + math.ceil(src.shape[0] / factors[0])] = \
                    downsample_mode(src, factors)
        shapes.append(nxt)
        level = dst
    unit_scale = list(voxel_size) if voxel_size is not None else [1.0, 1.0, 1.0]
    names = ("y", "x") if is_2d else ("z", "y", "x")
    base = unit_scale[1:] if is_2d else unit_scale
    datasets = []
    for i in range(len(shapes)):
        scale = [float(b) * (f ** i) for b, f in zip(base, factors)]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": n, "type": "space", **({"unit": "nanometer"} if voxel_size is not None else {})} for n in names]
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": "labels", "axes": axes, "datasets": datasets, "type": "mode",
        "metadata": {"description": "emseg labels; level i+1 = most frequent label of each "
                                    f"{'x'.join(str(f) for f in factors)} box of level i"},
    }]
    return shapes


