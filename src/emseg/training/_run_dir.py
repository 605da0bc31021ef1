"""The run directory of ``emseg train``: what is written there, in which order, and how a run resumes.

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one line per
finished epoch), ``last.pt`` (everything a resume needs), ``model.pt`` (the
best epoch) and, once training ends, ``summary.json``.  Checkpoints are written
through a hidden temporary (``.last.tmp-<pid>-<random>.pt``) renamed over the
final name, so a kill never leaves a truncated ``model.pt`` or ``last.pt``; the
functions here clean what a kill can leave (the temporaries, a metrics line of
an epoch whose checkpoint was never written) and turn disk-full errors into a
message that says which file and what to do.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emseg.io import atomic_output
from emseg.io import remove_stale_temporaries as _remove_stale_temporaries
from emseg.io import TMP_MARKER
from emseg.models import MODEL_FILENAME, CheckpointError, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "LAST_FILENAME",
    "METRICS_FILENAME",
    "RESUME_KEYS",
    "RunWriteError",
    "append_metrics",
    "never_finished",
    "network_differences",
    "prepare_run_dir",
    "remove_stale_temporaries",
    "restore_best",
    "truncate_metrics",
    "writing",
]

LAST_FILENAME = "last.pt"
METRICS_FILENAME = "metrics.jsonl"
CONFIG_FILENAME = "config.yaml"
SUMMARY_FILENAME = "summary.json"
WEIGHT_CACHE_FILENAME = "weight_maps.npz"
#: Every file ``emseg train`` writes in a run directory.
RUN_FILES = (MODEL_FILENAME, LAST_FILENAME, METRICS_FILENAME, SUMMARY_FILENAME, CONFIG_FILENAME, WEIGHT_CACHE_FILENAME)
#: Keys ``last.pt`` holds beyond ``model.pt``'s: without them, ``last.pt`` of a best epoch *is* that epoch's model.
RESUME_KEYS = ("optimizer", "train_state", "ema", "rng", "semi")
#: The configuration keys that fix the network's shape and meaning; a resume must not change them.
NETWORK_KEYS = ("model", "data.classes", "preprocess")
#: ... except the files of pretrained weights (encoder weights, model.init), which only seed a new run.
_IGNORED_NETWORK_KEYS = ("model.encoder_weights", "model.init")


class RunWriteError(OSError):
    """Writing a file of the run directory failed (usually: the disk is full); the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextmanager
def writing(path: Path, *, resumable: Path | None = None) -> Iterator[None]:
    """Turn a failed write of ``path`` into a :class:`RunWriteError` that says what to do.

    A full disk shows up as ``OSError(ENOSPC)`` from Python writes and as
    torch's ``RuntimeError: [enforce fail at inline_container.cc:...]
    PytorchStreamWriter failed writing file ...: file write failed`` from
    ``torch.save``.  The writes themselves go through temporaries (removed on
    failure), so nothing half-written is left behind.

    Args:
        path: the file being written.
        resumable: ``last.pt`` when it holds a finished epoch; the message then says to resume.
    """
    after = (f"; {resumable} of the last finished epoch is intact: continue with --resume once there is space"
             if resumable is not None and resumable.is_file() else "")
    try:
        yield
    except RunWriteError:
        raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunWriteError(err.errno, f"no space left on the device writing {path}; free space or choose "
                                           f"another --out{after}") from None
        raise RunWriteError(err.errno, f"could not write {path} ({err.strerror or err}); check the folder's "
                                       f"permissions and free space, or choose another --out{after}") from None
    except RuntimeError as err:
        text = str(err)
        if "PytorchStreamWriter" not in text and "file write failed" not in text and "inline_container" not in text:
            raise
        raise RunWriteError(errno.ENOSPC, f"no space left writing {path} (torch.save: file write failed); free "
                                          f"space or choose another --out{after}") from None


def _is_temporary(name: str) -> bool:
    """A hidden temporary of one of the run files: ``.model.tmp-<pid>-<hex>.pt``, ``.metrics.old-...`` ..."""
    for file in RUN_FILES:
        stem = file.rsplit(".", 1)[0]
        if name.startswith(f".{stem}{TMP_MARKER}") or name.startswith(f".{stem}.old-"):
            return True
    return False


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Remove the hidden temporaries of the run files that a killed run left in ``out_dir``; returns them.

    ``atomic_output`` removes its temporary on any exception, but a ``kill -9`` or a power cut mid-write
    leaves it (see :func:`emseg.io.remove_stale_temporaries`: those of running processes are kept).
    """
    return _remove_stale_temporaries(out_dir, names=RUN_FILES)


def never_finished(out_dir: Path) -> bool:
    """``out_dir`` holds only what a run writes before its first checkpoint (config, a metrics line, caches)."""
    if not out_dir.is_dir():
        return False
    entries = [p.name for p in out_dir.iterdir()]
    names = {name for name in entries if not _is_temporary(name)}
    return bool(entries) and names <= {CONFIG_FILENAME, METRICS_FILENAME, WEIGHT_CACHE_FILENAME}


def prepare_run_dir(out_dir: Path, *, overwrite: bool, resume: bool, files: tuple[str, ...],
                    what: str = "run directory", restartable: bool = False,
                    temporaries: tuple[str, ...] | None = None) -> None:
    """Make ``out_dir`` ready for a run (``emseg train``, ``emseg pretrain``): refuse a non-empty folder
    unless ``overwrite`` or ``resume``, create it, clean the temporaries a killed run left (only those of
    ``temporaries``, default: all) and, when starting again (``overwrite`` without ``resume``), delete
    ``files`` (the run's outputs). ``restartable``: a folder that holds only the start of a training run
    that never finished an epoch (:func:`never_finished`) is started again without ``overwrite``.
    """
    if out_dir.exists() and any(out_dir.iterdir()) and not (overwrite or resume):
        if not (restartable and never_finished(out_dir)):
            raise FileExistsError(f"{what} {out_dir} is not empty; choose another --out, pass --overwrite to start "
                                  f"again or --resume to continue")
        logger.warning("%s holds only the start of a run that never finished an epoch (no %s): starting it again",
                       out_dir, LAST_FILENAME)
        overwrite = True
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir, names=temporaries)
    if overwrite and not resume:
        for name in files:
            (out_dir / name).unlink(missing_ok=True)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; on a failed write the file is cut back to its previous length (no partial line)."""
    line = json.dumps(record, allow_nan=False) + "\n"
    size = path.stat().st_size if path.is_file() else 0
    try:
        with open(path, "a") as f:
            f.write(line)
            f.flush()
    except OSError:
        try:
            with open(path, "r+") as f:
                f.truncate(size)
        except OSError:
            pass
        raise


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The parseable records of ``metrics.jsonl`` (a line cut by a kill is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def truncate_metrics(path: Path, epochs: int) -> int:
    """Keep one line per epoch ``1..epochs`` in ``metrics.jsonl`` (rewritten atomically); returns lines dropped.

    A run killed after writing an epoch's metrics line but before its
    ``last.pt`` resumes from the epoch before and writes that line again:
    without this, ``metrics.jsonl`` would list the epoch twice.
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept, seen = [], set()
    for record in read_metrics(path):
        if record["epoch"] <= epochs and record["epoch"] not in seen:
            seen.add(record["epoch"])
            kept.append(record)
    dropped = len(lines) - len(kept)
    if dropped:
        with writing(path), atomic_output(path) as tmp:
            tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        logger.info("%s: dropped %d line(s) of epochs after epoch %d, the last one saved in %s", path, dropped, epochs,
                    LAST_FILENAME)
    return dropped


def restore_best(out_dir: Path, last: dict[str, Any]) -> bool:
    """Make ``model.pt`` the best epoch that ``last.pt`` records; returns whether it was rewritten.

    The trainer writes ``last.pt`` before ``model.pt`` (see its comment): a kill
    between the two leaves a ``last.pt`` whose best epoch is its own epoch and
    a ``model.pt`` one best behind.  ``last.pt`` then holds exactly that best
    epoch's model (its keys without :data:`RESUME_KEYS`), so ``model.pt`` is
    rewritten from it.
    """
    info = last.get("training", {})
    if info.get("best_epoch") != info.get("epoch"):
        return False
    path = out_dir / MODEL_FILENAME
    try:
        current = load_checkpoint(path)["training"].get("epoch") if path.is_file() else None
    except CheckpointError:
        current = None
    if current == info["epoch"]:
        return False
    with writing(path):
        save_checkpoint(path, {k: v for k, v in last.items() if k not in RESUME_KEYS and k not in ("format", "format_version")})
    logger.warning("%s was one epoch behind %s (the run was stopped between the two writes): rewritten with "
                   "epoch %d, the best", path, out_dir / LAST_FILENAME, info["epoch"])
    return True


def _flatten(data: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}"))
    return out


def network_differences(run: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, run's value, new value)`` for every :data:`NETWORK_KEYS` entry that differs (dotted keys)."""
    diffs = []
    for key in NETWORK_KEYS:
        section, _, field = key.partition(".")
        old_part = (run.get(section) or {}) if isinstance(run, dict) else {}
        new_part = new.get(section) or {}
        if field:
            old_part, new_part = {field: old_part.get(field)}, {field: new_part.get(field)}
        old_flat, new_flat = _flatten(old_part, section), _flatten(new_part, section)
        for name in sorted(set(old_flat) | set(new_flat)):
            if name in _IGNORED_NETWORK_KEYS:
                continue
            if old_flat.get(name, "(not set)") != new_flat.get(name, "(not set)"):
                diffs.append((name, old_flat.get(name, "(not set)"), new_flat.get(name, "(not set)")))
    return diffs


def describe_differences(diffs: list[tuple[str, Any, Any]], *, limit: int = 6) -> str:
    """``model.features: [4, 8] in the run, [8, 16] now; ...`` (at most ``limit`` keys)."""
    parts = [f"{key}: {old!r} in the run, {new!r} now" for key, old, new in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more")
    return "; ".join(parts)


def replace_text(path: Path, text: str) -> None:
    """Write a small text file of the run directory atomically, with the disk-full message on failure."""
    with writing(path), atomic_output(path) as tmp:
        tmp.write_text(text)

