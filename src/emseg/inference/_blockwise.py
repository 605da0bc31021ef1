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

The engine is this module (jobs, caches, the serial and parallel runs); the block layout is in
:mod:`emseg.inference._block_layout` and the run state (metadata, markers, resume checks) in
:mod:`emseg.inference._run_state`. The store itself (creating it, its attributes, the OME-Zarr pyramid) is
written by :mod:`emseg.io` (``create_label_store``, ``write_label_pyramid``).

Predictor interface used (any object offering it plugs in: 3-D models, ensembles):
``classes``; ``block_input(region, shape) -> input box``;
``predict_proba_block(data, origin=, region=, shape=) -> (K, nz, ny, nx)``; optionally
``predict_labels_block`` with the same arguments ``-> (nz, ny, nx)``, used instead where present.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emseg._progress import progress_bar
from emseg._version import __version__
from emseg.inference._block_layout import (
    BlockLayout,
    VolumeBlockAdapter,
    as_block_predictor,
    block_labels,
    choose_block,
)
from emseg.inference._block_jobs import BlockJob, _cached_predictor, _file_resolved_overlap, run_block, write_block
from emseg.inference._outputs import check_distinct_paths, check_finite, check_options, check_writable, write_failure
from emseg.inference._route import (AGREEMENT_THRESHOLD, MAX_MEMORY_GB, Route, calibrate_recorded, describe,
                                   engine_route)
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
from emseg.io import discard, open_image, open_store_array, remove_path, write_label_pyramid
from emseg.models import resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["BlockJob", "BlockLayout", "ResumeError", "VolumeBlockAdapter", "as_block_predictor", "file_sha256",
           "predict_blockwise", "run_block", "write_block"]


# ----------------------------------------------------------------- the engine


def predict_blockwise(
    model: str | os.PathLike | Any,
    image: str | os.PathLike,
    output: str | os.PathLike,
    *,
    block: tuple[int, int, int] | None = None,
    workers: int = 0,
    threads: int | None = None,
    scheduler: str | None = None,
    resume: bool | None = None,
    overwrite: bool = False,
    ome_zarr: bool = False,
    zarr_format: int = 3,
    precision: str = "auto",
    tta: bool = False,
    overlap: float | str = "auto",
    window: tuple[int, int] | None = None,
    batch_size: int | None = None,
    jit: bool = False,
    calibrated: bool = True,
    progress: bool = True,
    max_blocks: int | None = None,
    loader: Callable[..., Any] | None = None,
    route: str | None = None,
    agreement: float = AGREEMENT_THRESHOLD,
    max_memory_gb: float | None = MAX_MEMORY_GB,
    io_threads: int | None = None,
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
        route: how the network runs (:mod:`emseg.inference._route`): ``"auto"`` (time the candidate
            routes on a probe of the first block, keep those whose labels agree with fp32, run the
            fastest), ``"auto+int8"`` (int8 among them), ``"default"`` or a route name (forced; a bf16
            or int8 one is refused below ``agreement``). None (default): ``"auto"`` for inputs of
            ``TUNE_MIN_VOXELS`` or more run in this process without precision/jit/window/batch
            size/threads options, else ``"default"``. Recorded in the store (``emseg.route``); a
            resumed run keeps it.
        agreement: smallest fraction of the probe's labels a route must share with fp32.
        max_memory_gb: a tuned route (``auto``) is the fastest whose estimated peak resident memory is
            within this many GB (None: no limit); see :mod:`emseg.inference._route`.
        io_threads: threads reading blocks ahead, and as many writing finished ones, in this process
            (``workers=0``); None: :func:`io_threads_for` the predictor (1 on a CPU, up to 4 on a GPU).
            More help inputs on slow or remote storage; the labels do not depend on it.

    Returns:
        The output path.

    Raises:
        ResumeError: the output is an unfinished run of a different model, input or layout.
        FileExistsError: the output exists (complete, or not an emseg run) and ``overwrite`` is False.
    """
    output = Path(output)
    if not str(output).lower().endswith(".zarr"):
        raise ValueError(f"blockwise output must be a .zarr store, got {output}")
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    check_options(window=window, batch_size=batch_size, workers=workers, threads=threads)
    if max_memory_gb is not None and not max_memory_gb > 0:
        raise ValueError(f"--max-memory {max_memory_gb}: give a positive number of GB, or 0 for no limit")
    if io_threads is not None and (isinstance(io_threads, bool) or not isinstance(io_threads, int)
                                   or io_threads < 1):
        raise ValueError(f"--io-threads {io_threads!r}: give a whole number of threads >= 1 (or leave it out: "
                         "1 on a CPU, up to 4 on a GPU)")
    if io_threads is not None and (workers or scheduler):
        raise ValueError("--io-threads sets this process's reader and writer threads: with --workers or "
                         "--scheduler each Dask worker reads and writes its own blocks; drop --io-threads")
    if route not in (None, "default", "auto", "auto+int8"):
        Route.parse(route)  # a bad name is refused before any work
    explicit = [flag for flag, given in (("--precision", precision != "auto"), ("--jit", jit), ("--window", window),
                                         ("--batch-size", batch_size), ("--threads", threads)) if given]
    if route not in (None, "default") and explicit:
        raise ValueError(f"--route {route} sets the precision, engine, threads, window and batch size itself: "
                         f"drop {', '.join(explicit)}, or drop --route")
    if route is not None and route.startswith("auto") and (workers or scheduler):
        raise ValueError(f"--route {route} tunes the route in this process: use --workers 0 (the default), or "
                         "give a route name (e.g. the one a serial run recorded)")
    if route is not None and route.startswith("int8") and (workers or scheduler):
        raise ValueError("an int8 route is quantised in this process: use --workers 0 (the default)")
    if route not in (None, "default") and not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"--route {route} needs the model as a path (a run directory or model.pt)")
    if route is None and (explicit or workers or scheduler or loader is not None
                          or not isinstance(model, (str, os.PathLike))):
        route = "default"
    threads = int(threads or 1)
    batch_size = int(batch_size or 4)
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
            resolved = _resolved_overlap(predictor, overlap)
            if loader is None and isinstance(resolved, float):
                _file_resolved_overlap(model_path, sha, options, resolved)
            options["overlap"] = resolved
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
        route_record: dict[str, Any] = {"name": None, "requested": route}
        if route != "default":
            stored = _resumable_route(output, resume=resume, overwrite=overwrite)
            first = choose_block(predictor if predictor is not None else probe, shape, block)
            chosen, route_record, options = engine_route(
                route, load=lambda **o: _cached_predictor(model_path, sha, o, loader), options=options,
                overlap=overlap, volume=data.array, z=min(shape[0] - 1, first[0] // 2), threshold=agreement,
                max_memory_gb=max_memory_gb, stored=stored)
            if chosen is not None:
                threads = chosen.threads
                predictor = _cached_predictor(model_path, sha, options, loader)
                calibrate_recorded(predictor, chosen, route_record, data.array)
            logger.info("%s", describe(route_record))
        blk = choose_block(predictor if predictor is not None else probe, shape, block)
        layout = BlockLayout(shape, blk)
        dtype = np.uint8 if len(classes) <= 255 else np.uint16
        out_shape, out_chunks = (shape[1:], blk[1:]) if is_2d else (shape, blk)
        meta = {
            "version": __version__, "status": "running", "model": model_path, "model_sha256": sha,
            "classes": list(classes), "input": input_id, "input_shape": list(shape), "input_dtype": in_dtype,
            "block_shape": list(blk), "n_blocks": len(layout), "predictor_options": options, "threads": threads,
            "route": route_record,
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
                        io = io_threads or io_threads_for(predictor)
                        if io > 1:
                            logger.info("reading ahead and writing with %d threads each", io)
                        _run_serial(predictor, data.array, output, labels_path, layout, todo, dtype, is_2d, on_done,
                                    io_threads=io)
                    finally:
                        torch.set_num_threads(before)
            elapsed = time.perf_counter() - start
        except BaseException as err:
            _after_failure(output, err, created=created)
            raise
    if finished_blocks(output) >= set(layout.indices()):
        try:
            if ome_zarr:
                write_label_pyramid(output, voxel_size=voxel_size, is_2d=is_2d, chunks=out_chunks)
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


def _resumable_route(output: Path, *, resume: bool | None, overwrite: bool) -> dict[str, Any] | None:
    """The route record of the unfinished run at ``output`` that this call will resume, if any."""
    if overwrite or resume is False or not output.exists():
        return None
    meta = read_run_metadata(output)
    if not meta or meta.get("status") != "running":
        return None
    return meta.get("route") or {"name": None}  # runs recorded before routes existed ran the default route


def _resolved_overlap(predictor: Any, requested: Any) -> Any:
    """The overlap actually used (``"auto"`` resolved), recorded so a resume with other settings is caught."""
    inner = getattr(predictor, "predictor", predictor)  # through VolumeBlockAdapter
    value = getattr(inner, "overlap", requested)
    return float(value) if isinstance(value, (int, float)) else value


def io_threads_for(predictor: Any) -> int:
    """Reader and writer threads each for a run in this process: 1 where the network runs on the CPU (its
    cores compute; one thread of each reads and writes far faster than a CPU network predicts), and up to 4
    (a quarter of the cores) where it runs on a GPU, whose network outruns one thread's zstd compression of
    the labels (250-290 MVox/s on one AVX2 core, docs/BENCHMARKS.md)."""
    inner = getattr(predictor, "predictor", predictor)  # through VolumeBlockAdapter
    device = getattr(inner, "device", None)
    if getattr(device, "type", device) != "cuda":
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def _run_serial(predictor: Any, volume: Any, output: Path, labels_path: str, layout: BlockLayout,
                todo: list[tuple[int, int, int]], dtype: Any, is_2d: bool,
                on_done: Callable[[tuple[int, int, int], int], None], io_threads: int = 1) -> None:
    """This process: the next ``io_threads`` blocks are read, and up to ``io_threads`` finished ones written,
    while one is computed.  Blocks are whole chunks, so writes in parallel never touch the same chunk;
    blocks are marked done (``on_done``) in order, each after its own write."""
    if not todo:
        return
    array = open_store_array(output, labels_path)
    shape = layout.shape

    def read(index):
        region = layout.region(index)
        box = predictor.block_input(region, shape)
        return region, box, np.asarray(volume[box])

    def write(index, region, labels):
        write_block(array, region, labels, is_2d)
        return index, int(labels.size)

    io_threads = max(1, int(io_threads))
    with cf.ThreadPoolExecutor(io_threads, thread_name_prefix="emseg-read") as reader, \
            cf.ThreadPoolExecutor(io_threads, thread_name_prefix="emseg-write") as writer:
        reads = collections.deque(reader.submit(read, index) for index in todo[:io_threads])
        writes: collections.deque[cf.Future] = collections.deque()
        try:
            for k, index in enumerate(todo):
                region, box, data = reads.popleft().result()
                if k + io_threads < len(todo):
                    reads.append(reader.submit(read, todo[k + io_threads]))
                labels = block_labels(predictor, data, origin=tuple(s.start for s in box), region=region,
                                      shape=shape, dtype=dtype)
                while len(writes) >= io_threads:  # at most io_threads blocks of labels wait for their write
                    on_done(*writes.popleft().result())
                writes.append(writer.submit(write, index, region, labels))
        finally:
            for future in reads:
                future.cancel()
            while writes:
                future = writes.popleft()
                if not future.cancelled():
                    on_done(*future.result())
