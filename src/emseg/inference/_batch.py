"""Many volumes in one ``emseg predict``: ``emseg predict MODEL 'raw/*.tif' 'labels/{stem}.zarr'``.

One process pays the start-up once (importing torch and MONAI, loading the model, its receptive-field
probe: several seconds on a CPU, more on a GPU host, see docs/BENCHMARKS.md) and tunes the route once:
the route tuned on the first volume (``--route auto``, or inputs of 2^28 voxels and more by default) is
forced on every later volume of the same slice shape and dtype, so its label agreement with fp32 is still
checked on each volume's own probe (a bf16 or int8 route that falls below the threshold there runs in
fp32 instead), but the candidates are not timed again.  Every volume is otherwise predicted exactly as by
one ``emseg predict`` (same labels, same files).

A batch is resumable as a whole: rerunning the same command skips finished outputs (a ``.zarr`` store
whose run is ``complete``; a written file), resumes an unfinished ``.zarr`` store, and predicts the
rest.  A volume that fails (an unreadable file, a full disk) does not stop the others by default; the
failures are listed at the end, and the rerun redoes only them.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import time
from pathlib import Path, PurePath
from typing import Any

from emseg.inference._predict import predict_with_route
from emseg.inference._predictor import Predictor
from emseg.inference._run_state import read_run_metadata
from emseg.io import open_image

logger = logging.getLogger(__name__)

__all__ = ["BatchItem", "batch_pairs", "is_batch", "predict_many"]

#: Characters that make an input a pattern of several inputs (``glob`` syntax).
GLOB_CHARS = "*?["
#: Placeholders of an output template: the matched name without its suffix, and with it.
PLACEHOLDERS = ("{stem}", "{name}")
_CONTAINERS = (".h5", ".hdf5", ".hdf")


@dataclasses.dataclass
class BatchItem:
    """One volume of a batch and what became of it: ``status`` is ``done``, ``skipped`` (its output was
    finished by an earlier run), ``failed`` (``error`` says why) or still ``pending`` (an interrupted batch)."""

    input: str
    output: str
    probabilities: str | None = None
    status: str = "pending"
    error: str | None = None
    route: str | None = None
    seconds: float = 0.0


def is_batch(input: str | os.PathLike, output: str | os.PathLike) -> bool:
    """Whether ``emseg predict INPUT OUTPUT`` is a batch: a pattern input or a templated output.

    An input that exists as written (``scan[1].tif``) is one input, whatever characters it holds.
    """
    text = os.fspath(input)
    pattern = any(c in text for c in GLOB_CHARS) and not os.path.exists(_split_container(text)[0])
    return pattern or any(p in os.fspath(output) for p in PLACEHOLDERS)


def batch_pairs(pattern: str | os.PathLike, output: str | os.PathLike,
                probabilities: str | os.PathLike | None = None) -> list[BatchItem]:
    """The inputs matching ``pattern`` (sorted) and the output each gets from the ``output`` template.

    ``pattern`` is a ``glob`` pattern of image paths, e.g. ``raw/*.tif``, ``runs/*.zarr/raw`` (an array
    inside each store) or ``stacks/*.h5:raw`` (a dataset inside each file).  ``{stem}`` in ``output`` (and
    in ``probabilities``) is the name that the first wildcard component of the pattern matched, without
    its suffix; ``{name}`` the name with it: ``raw/*.tif`` matching ``raw/cell_3.tif`` gives ``cell_3``
    and ``cell_3.tif``.

    Raises:
        ValueError: no match; several matches but an output without a placeholder; two inputs that
            would write the same output; an output that is one of the inputs.
    """
    text, template = os.fspath(pattern), os.fspath(output)
    prob_template = None if probabilities is None else os.fspath(probabilities)
    file_pattern, inner = _split_container(text)
    matches = sorted(glob.glob(file_pattern))
    if not matches:
        raise ValueError(f"input pattern {text!r} matches no file or folder: check the path (quote the "
                         "pattern so the shell does not expand it, e.g. 'raw/*.tif')")
    for name, tmpl in (("OUTPUT", template), ("--probabilities", prob_template)):
        if tmpl is not None and len(matches) > 1 and not any(p in tmpl for p in PLACEHOLDERS):
            raise ValueError(f"input pattern {text!r} matches {len(matches)} inputs, so {name} {tmpl!r} must "
                             "name one output per input: put {stem} in it, e.g. labels/{stem}.zarr")
    wild = _first_wild_part(file_pattern)
    items, seen = [], {}
    for match in matches:
        part = PurePath(match).parts[wild] if wild is not None else PurePath(match).name
        fields = {"stem": _stem(part), "name": part}
        source = f"{match}:{inner}" if inner else match
        target = _fill(template, fields)
        item = BatchItem(source, target, None if prob_template is None else _fill(prob_template, fields))
        for path in (item.output, item.probabilities):
            if path is None:
                continue
            key = os.path.abspath(path)
            if key in seen:
                raise ValueError(f"inputs {seen[key]} and {source} would both write {path}: use {{name}} or a "
                                 "longer part of the path in the output template so each input gets its own")
            seen[key] = source
        items.append(item)
    inputs = {os.path.abspath(i.input) for i in items}
    for item in items:
        for path in (item.output, item.probabilities):
            if path is not None and os.path.abspath(path) in inputs:
                raise ValueError(f"output {path} is one of the inputs matched by {text!r}: write the outputs "
                                 "elsewhere (another folder or suffix)")
    return items


def predict_many(model: str | os.PathLike | Predictor, items: list[BatchItem], *, overwrite: bool = False,
                 keep_going: bool = True, route: str | None = None, **options: Any) -> list[BatchItem]:
    """Predict every item of a batch in this process, reusing the model and a tuned route (module doc).

    Args:
        model: run directory, ``model.pt`` or a :class:`~emseg.inference.Predictor`.
        items: from :func:`batch_pairs` (or built by hand).
        overwrite: predict finished outputs again instead of skipping them.
        keep_going: go on after a volume fails (the default); False re-raises the first failure.
        route: as for :func:`~emseg.inference.predict`; None or ``auto``/``auto+int8``: a route tuned on one
            volume is forced on the next ones of the same slice shape and dtype.
        **options: :func:`~emseg.inference.predict` options (``precision``, ``block``, ``window``, ...).

    Returns:
        ``items``, each with its ``status``, ``error``, ``route`` and ``seconds``.
    """
    tuned: dict[tuple[Any, ...], str] = {}
    for k, item in enumerate(items, 1):
        if not overwrite and _finished(item):
            item.status = "skipped"
            logger.info("volume %d of %d: %s is finished already, skipped", k, len(items), item.output)
            _remember(tuned, item, route, (read_run_metadata(item.output) or {}).get("route")
                      if item.output.lower().endswith(".zarr") else None)
            continue
        logger.info("volume %d of %d: %s -> %s", k, len(items), item.input, item.output)
        start = time.perf_counter()
        try:
            key = _plane_key(item.input) if route in (None, "auto", "auto+int8") else None
            reuse = tuned.get(key) if key is not None and not _unfinished_run(item.output) else None
            if reuse is not None:
                logger.info("route %s, tuned on an earlier volume of this batch (%s x %s slices)", reuse, *key[:2])
            _, record = predict_with_route(model, item.input, item.output, probabilities=item.probabilities,
                                           overwrite=overwrite, route=reuse or route, **options)
        except Exception as err:  # noqa: BLE001 - one bad volume must not stop an overnight batch
            item.status, item.error = "failed", f"{type(err).__name__}: {err}"
            item.seconds = time.perf_counter() - start
            logger.error("volume %d of %d failed: %s: %s", k, len(items), item.input, err)
            if not keep_going:
                raise
            continue
        item.status, item.seconds = "done", time.perf_counter() - start
        _remember(tuned, item, route, record, key)
    return items


def _remember(tuned: dict[tuple[Any, ...], str], item: BatchItem, route: str | None,
              record: dict[str, Any] | None, key: tuple[Any, ...] | None = None) -> None:
    """Note the route ``item`` ran; a tuned one (not forced, not the default) serves its slice shape next."""
    item.route = (record or {}).get("name")
    if item.route and route in (None, "auto", "auto+int8") and record.get("requested") in ("auto", "auto+int8"):
        try:
            tuned[key if key is not None else _plane_key(item.input)] = item.route
        except (OSError, ValueError):  # a skipped item whose input is gone: nothing to learn from it
            pass


def _split_container(text: str) -> tuple[str, str]:
    """``stacks/*.h5:raw`` -> ``("stacks/*.h5", "raw")``; anything else -> ``(text, "")``."""
    head, sep, inner = text.rpartition(":")
    if sep and head.lower().endswith(_CONTAINERS):
        return head, inner
    return text, ""


def _first_wild_part(pattern: str) -> int | None:
    for i, part in enumerate(PurePath(pattern).parts):
        if any(c in part for c in GLOB_CHARS):
            return i
    return None


def _stem(name: str) -> str:
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return PurePath(name).stem if PurePath(name).suffix else name


def _fill(template: str, fields: dict[str, str]) -> str:
    for key, value in fields.items():
        template = template.replace("{" + key + "}", value)
    return template


def _plane_key(image: str) -> tuple[Any, ...]:
    """``(Y, X, dtype)`` of an input: volumes alike in these share a tuned route."""
    with open_image(image) as data:
        return (*(int(s) for s in data.array.shape[1:]), str(data.array.dtype))


def _unfinished_run(output: str) -> bool:
    """An unfinished ``.zarr`` run at ``output``: resumed with its own recorded route, never another."""
    return output.lower().endswith(".zarr") and (read_run_metadata(output) or {}).get("status") == "running"


def _finished(item: BatchItem) -> bool:
    """Whether an earlier run finished this item: a complete ``.zarr`` run, or the written file(s).

    In-memory outputs (``.tif``, ``.h5``, ``.png``, a ``.zarr`` with probabilities) are staged under a
    hidden name and renamed when complete, so one that exists is finished.
    """
    if item.output.lower().endswith(".zarr") and item.probabilities is None:
        return (read_run_metadata(item.output) or {}).get("status") == "complete"
    return all(_written(p) for p in (item.output, item.probabilities) if p is not None)


def _written(path: str) -> bool:
    file, inner = _split_container(path)
    if inner:
        if not Path(file).is_file():
            return False
        import h5py

        with h5py.File(file, "r") as h5:
            return inner.strip("/") in h5
    return Path(path).exists()
