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

Predictor interface used (any object offering it plugs in: 3-D models, ensembles):
``classes``; ``block_input(region, shape) -> input box``;
``predict_proba_block(data, origin=, region=, shape=) -> (K, nz, ny, nx)``; optionally
``predict_labels_block`` with the same arguments ``-> (nz, ny, nx)``, used instead where present.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emseg._device import cpu_has_native_bf16
from emseg.inference._outputs import check_distinct_paths, check_finite, check_options, check_writable, write_failure
from emseg.inference._predictor import load_predictor
from emseg.inference._tiling import first_argmax
from emseg.io import open_image
from emseg.io._atomic import discard, remove_path
from emseg.models import resolve_model_path

logger = logging.getLogger(__name__)

__all__ = ["BlockJob", "BlockLayout", "ResumeError", "VolumeBlockAdapter", "as_block_predictor", "file_sha256",
           "predict_blockwise"]

MARKER_DIR = ".emseg/blocks"
#: Memory budget for one block's class probabilities (float32), which sets the z depth of a block.
BLOCK_BYTES = 256 * 2**20
#: Largest slice (pixels) predicted whole in-plane; larger slices are cut into in-plane blocks.
MAX_PLANE = 4096 * 4096
PLANE_BLOCK = 2048


class ResumeError(ValueError):
    """An existing output belongs to a different run (model, input or block layout)."""


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(2**20), b""):
            digest.update(piece)
    return digest.hexdigest()


@dataclass(frozen=True)
class BlockLayout:
    """A ``(Z, Y, X)`` volume cut into blocks of ``block`` voxels (the last ones smaller)."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block))  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.grid))

    def indices(self) -> Iterator[tuple[int, int, int]]:
        yield from itertools.product(*(range(g) for g in self.grid))

    def region(self, index: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """Global box of block ``index``."""
        return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block, self.shape))  # type: ignore[return-value]


def choose_block(predictor: Any, shape: tuple[int, int, int], block: tuple[int, int, int] | None = None
                 ) -> tuple[int, int, int]:
    """Block shape: the user's, else whole slices (z-only blocks) sized to :data:`BLOCK_BYTES`.

    A predictor may propose its own with ``preferred_block(shape)`` (3-D models).
    """
    if block is not None:
        if len(block) != 3 or any(int(b) < 1 for b in block):
            raise ValueError(f"block must be three positive ints (z, y, x), got {block!r}")
        return tuple(min(int(b), s) for b, s in zip(block, shape))  # type: ignore[return-value]
    preferred = getattr(predictor, "preferred_block", None)
    if preferred is not None:
        return tuple(min(int(b), s) for b, s in zip(preferred(shape), shape))  # type: ignore[return-value]
    z, y, x = shape
    if y * x > MAX_PLANE:
        y, x = min(y, PLANE_BLOCK), min(x, PLANE_BLOCK)
    per_slice = len(predictor.classes) * y * x * 4
    bz = int(max(1, min(32, BLOCK_BYTES // per_slice, z)))
    return bz, y, x


class VolumeBlockAdapter:
    """Blockwise interface for a predictor offering only ``predict_proba_volume`` and a ``halo``.

    Reads the block plus ``halo = (hz, hy, hx)`` voxels each side (clipped to the volume), predicts that
    sub-volume and crops it.  Exact where the predictor's output at a voxel depends only on input within
    the halo and not on where its windows start (e.g. 2.5-D slice models along z); otherwise close to,
    but not bit-identical with, whole-volume prediction near block borders.
    """

    def __init__(self, predictor: Any):
        self.predictor = predictor
        self.classes = predictor.classes
        self.halo = tuple(int(h) for h in getattr(predictor, "halo", (0, 0, 0)))

    def __getattr__(self, name: str) -> Any:  # preferred_block, overlap, ... of the wrapped predictor
        return getattr(self.__dict__["predictor"], name)

    def block_input(self, region, shape):
        return tuple(slice(max(0, r.start - h), min(s, r.stop + h)) for r, h, s in zip(region, self.halo, shape))

    def predict_proba_block(self, data, *, origin, region, shape):
        probs = self.predictor.predict_proba_volume(data)
        return probs[(slice(None),) + tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, origin))]


def as_block_predictor(predictor: Any) -> Any:
    """``predictor`` itself if it has the blockwise interface, else a :class:`VolumeBlockAdapter`."""
    if getattr(predictor, "spatial_dims", 2) == 2 and hasattr(predictor, "block_input") \
            and hasattr(predictor, "predict_proba_block"):
        return predictor
    if hasattr(predictor, "predict_proba_volume"):
        return VolumeBlockAdapter(predictor)
    raise TypeError(f"{type(predictor).__name__} has neither predict_proba_block nor predict_proba_volume")


def predict_labels_block(predictor: Any, read: Callable[[tuple[slice, ...]], np.ndarray],
                         region: tuple[slice, slice, slice], shape: tuple[int, int, int], dtype: Any) -> np.ndarray:
    """Labels ``(nz, ny, nx)`` of ``region``: read the predictor's input box, predict, argmax."""
    box = predictor.block_input(region, shape)
    return block_labels(predictor, read(box), origin=tuple(s.start for s in box), region=region, shape=shape,
                        dtype=dtype)


def block_labels(predictor: Any, data: np.ndarray, *, origin, region, shape, dtype: Any) -> np.ndarray:
    """Labels of ``region`` from its input ``data``: the predictor's ``predict_labels_block`` where it has
    one (no probabilities formed), else the argmax of ``predict_proba_block``."""
    if hasattr(predictor, "predict_labels_block"):
        labels = predictor.predict_labels_block(data, origin=origin, region=region, shape=shape)
    else:
        labels = first_argmax(predictor.predict_proba_block(data, origin=origin, region=region, shape=shape))
    return labels.astype(dtype, copy=False)


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


# ----------------------------------------------------------------- the output store


def _marker(output: Path, index: tuple[int, int, int]) -> Path:
    return output / MARKER_DIR / ".".join(str(i) for i in index)


def finished_blocks(output: str | os.PathLike) -> set[tuple[int, int, int]]:
    """Indices of the blocks marked done in an output store."""
    folder = Path(output) / MARKER_DIR
    if not folder.is_dir():
        return set()
    done = set()
    for p in folder.iterdir():
        parts = p.name.split(".")
        if len(parts) == 3 and all(s.isdigit() for s in parts):
            done.add(tuple(int(s) for s in parts))
    return done


def _mark(output: Path, index: tuple[int, int, int]) -> None:
    path = _marker(output, index)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text("")
    os.replace(tmp, path)


def read_run_metadata(output: str | os.PathLike) -> dict[str, Any] | None:
    """The ``emseg`` attributes of a blockwise output store, or None if it is not one."""
    output = Path(output)
    for name in ("zarr.json", ".zattrs"):
        meta = output / name
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except ValueError:
                return None
            attrs = data.get("attributes", {}) if name == "zarr.json" else data
            found = attrs.get("emseg")
            return found if isinstance(found, dict) else None
    return None


_IDENTITY_KEYS = ("model_sha256", "input", "input_shape", "input_dtype", "block_shape", "predictor_options",
                  "ome_zarr", "zarr_format", "threads")
_IDENTITY_DEFAULTS = {"threads": 1}  # runs recorded before the key existed used one thread


def _check_same_run(output: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    def get(meta, k):
        return meta.get(k, _IDENTITY_DEFAULTS.get(k))

    diffs = [f"{k}: stored {get(stored, k)!r}, now {get(wanted, k)!r}" for k in _IDENTITY_KEYS
             if _jsonable(get(stored, k)) != _jsonable(get(wanted, k))]
    if diffs:
        raise ResumeError(
            f"cannot resume {output}: it is an unfinished run of a different prediction ({'; '.join(diffs)}). "
            "Pass --overwrite to start again, or choose another output path"
        )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _create_output(output: Path, *, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, meta: dict,
                   ome: bool, zarr_format: int) -> str:
    """Create the store; returns the path of the full-resolution labels array inside it."""
    import zarr

    if ome:
        root = zarr.open_group(store=str(output), mode="w", zarr_format=2)
        root.attrs["emseg"] = meta
        zarr.create_array(store=str(output), name="0", shape=shape, chunks=chunks, dtype=dtype, zarr_format=2,
                          fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"},
                          dimension_names=None)
        path = "0"
    else:
        zarr.create_array(store=str(output), shape=shape, chunks=chunks, dtype=dtype, zarr_format=zarr_format,
                          fill_value=0, attributes={"emseg": meta})
        path = ""
    (output / MARKER_DIR).mkdir(parents=True, exist_ok=True)
    return path


def _update_meta(output: Path, **changes: Any) -> None:
    import zarr

    node = zarr.open(store=str(output), mode="r+")
    meta = dict(node.attrs.get("emseg", {}))
    meta.update(changes)
    node.attrs["emseg"] = meta


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
    from emseg import __version__
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


def _tree_sha256(folder: Path) -> str:
    """SHA-256 over the files of a model folder (an ensemble), names and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _prepare_output(output: Path, meta: dict, *, resume: bool | None, overwrite: bool, shape, chunks, dtype,
                    ome: bool, zarr_format: int, remove: Callable[[Path], None]) -> str:
    if output.exists() and overwrite:
        remove(output)
    if output.exists():
        stored = read_run_metadata(output)
        if stored is None:
            raise FileExistsError(f"{output} already exists and is not an emseg prediction; pass --overwrite to replace it")
        if stored.get("status") == "complete":
            raise FileExistsError(f"{output} already exists (a complete prediction); pass --overwrite to replace it")
        if resume is False:
            raise FileExistsError(f"{output} is an unfinished prediction; pass --resume to continue it or "
                                  "--overwrite to start again")
        _check_same_run(output, stored, meta)
        _remove_partial_chunks(output)
        return "0" if ome else ""
    if resume:
        logger.info("nothing to resume at %s: starting a new prediction", output)
    return _create_output(output, shape=shape, chunks=chunks, dtype=dtype, meta=meta, ome=ome,
                          zarr_format=zarr_format)


def _remove_partial_chunks(output: Path) -> None:
    """Delete the temporary chunk files (``<chunk>.<uuid>.partial``) a killed zarr writer left behind.

    zarr writes a chunk to such a file and renames it; a SIGKILL between the two leaves it in the store.
    The chunk itself is rewritten on resume (its block was not marked done), so the leftover is garbage.
    """
    for leftover in output.rglob("*.partial"):
        if leftover.is_file():
            leftover.unlink()
            logger.info("removed %s, left by an interrupted run", leftover)


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


def summarize(output: str | os.PathLike) -> dict[str, Any]:
    """Run metadata plus blocks done (for reports)."""
    meta = read_run_metadata(output) or {}
    return {**meta, "blocks_done": len(finished_blocks(output))}

