"""Run state of blockwise prediction: the output store's metadata, the done-markers and the resume checks.

Part of the blockwise engine (:mod:`emseg.inference._blockwise`): a block is done
when its marker ``OUTPUT/.emseg/blocks/<z>.<y>.<x>`` exists; the store's ``emseg``
attributes record what was predicted, so a rerun resumes only the same run
(:class:`ResumeError` otherwise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emseg.io import create_label_store, file_sha256, read_store_attrs, update_store_attrs

logger = logging.getLogger(__name__)

__all__ = ["MARKER_DIR", "ResumeError", "file_sha256", "finished_blocks", "read_run_metadata", "summarize"]


MARKER_DIR = ".emseg/blocks"


class ResumeError(ValueError):
    """An existing output belongs to a different run (model, input or block layout)."""


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
    return read_store_attrs(output, "emseg")


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
    """Create the store and its marker folder; returns the path of the full-resolution labels array inside it."""
    path = create_label_store(output, shape=shape, chunks=chunks, dtype=dtype, attrs={"emseg": meta}, ome=ome,
                              zarr_format=zarr_format)
    (output / MARKER_DIR).mkdir(parents=True, exist_ok=True)
    return path


def _update_meta(output: Path, **changes: Any) -> None:
    update_store_attrs(output, "emseg", **changes)


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


def summarize(output: str | os.PathLike) -> dict[str, Any]:
    """Run metadata plus blocks done (for reports)."""
    meta = read_run_metadata(output) or {}
    return {**meta, "blocks_done": len(finished_blocks(output))}
