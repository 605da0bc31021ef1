"""Atomic output: write to a temporary name, rename only when complete."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = [
    "atomic_output",
    "discard",
    "remove_path",
    "remove_stale_temporaries",
    "settle_background_writes",
    "temporary_sibling",
]

TMP_MARKER = ".tmp-"


def temporary_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """Return an unused hidden name next to ``path`` that keeps its suffix.

    ``out/vol.tif`` -> ``out/.vol.tmp-<pid>-<random>.tif``.  The suffix is kept
    because some writers (``np.save``, ``torch.save`` users) add or check it.
    """
    path = Path(path)
    suffix = path.suffix
    stem = path.name[: -len(suffix)] if suffix else path.name
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{stem}.{tag}-{token}{suffix}")


def _writer_pid(name: str, stems: set[str] | None) -> int | None:
    """The writer's pid of a hidden temporary ``.STEM.tmp-<pid>-<hex>...`` / ``.STEM.old-<pid>-...``, else None."""
    if not name.startswith("."):
        return None
    for marker in (TMP_MARKER, ".old-"):
        stem, found, rest = name[1:].partition(marker)
        if found and (stems is None or stem in stems):
            pid = rest.split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, *, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the hidden temporaries that writers killed mid-write (``kill -9``, power cut) left in ``folder``.

    :func:`atomic_output` removes its temporary on any exception, but nothing runs at SIGKILL. A temporary
    (``.NAME.tmp-<pid>-<hex>SUFFIX``, see :func:`temporary_sibling`) is stale when its writer process no
    longer runs on this machine; temporaries of this process and of running ones are kept. ``names``: only
    the temporaries of these outputs (``["labels.tif"]``), e.g. when rerunning a command into a shared folder.

    Returns:
        The removed paths (a warning lists them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stems = None
    if names is not None:
        stems = {Path(n).name[: -len(Path(n).suffix)] if Path(n).suffix else Path(n).name for n in names}
    stale = []
    for child in sorted(folder.iterdir()):
        pid = _writer_pid(child.name, stems)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        remove_path(child)
        stale.append(child)
    if stale:
        logger.warning("removed %d unfinished temporary file(s) left in %s by an interrupted run: %s",
                       len(stale), folder, ", ".join(p.name for p in stale))
    return stale


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, link or directory tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def settle_background_writes(timeout: float = 60.0) -> None:
    """Wait until zarr's in-flight asynchronous writes have finished (or failed).

    zarr 3 writes the chunks of one assignment concurrently on its own event loop, with
    ``asyncio.gather``: when one write fails (a full disk) the error reaches the caller at once while
    its siblings run on, and they recreate files in a temporary that was just removed.  Called before
    cleaning up after a failure.  Does nothing when zarr has not been used in this process.
    """
    sync = sys.modules.get("zarr.core.sync")
    loop = (getattr(sync, "loop", None) or [None])[0] if sync is not None else None
    if loop is None or not loop.is_running():
        return

    async def wait() -> None:
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    try:
        asyncio.run_coroutine_threadsafe(wait(), loop).result(timeout + 5)
    except Exception:  # noqa: BLE001 - cleaning up must not mask the real error
        logger.debug("could not wait for zarr's pending writes", exc_info=True)


def discard(path: str | os.PathLike) -> None:
    """Remove a temporary after a failure, once no background write can recreate parts of it."""
    for _ in range(3):
        settle_background_writes()
        remove_path(path)
        if not (os.path.lexists(path)):
            return
    logger.warning("could not remove the temporary %s; delete it by hand", path)


class atomic_output:  # noqa: N801 - used like a function: `with atomic_output(path) as tmp:`
    """Context manager giving a temporary path that replaces ``path`` on success.

    Usage::

        with atomic_output("out/volume.zarr") as tmp:
            write_something(tmp)          # a file or a directory
        # now out/volume.zarr exists and is complete

    The temporary lives in the same folder as ``path`` (so the final rename is
    atomic for files) under a hidden name containing ``.tmp-``.  On success it
    is renamed to ``path``: an existing file is replaced atomically; an
    existing directory is moved aside, replaced, then deleted, so it is only
    lost once the new output is in place.  On any exception (including
    KeyboardInterrupt) the temporary is removed and the error re-raised, and
    ``path`` is left untouched.  Missing parent folders are created.

    Args:
        path: the final file or directory.
        overwrite: if False and ``path`` exists, raise :class:`FileExistsError`
            on entry.  Default True: replace the existing output on success.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        FileNotFoundError: the body finished without creating the temporary.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = True):
        self.path = Path(path)
        self.overwrite = overwrite
        self.tmp_path: Path | None = None

    def __enter__(self) -> Path:
        if not self.overwrite and (self.path.exists() or self.path.is_symlink()):
            raise FileExistsError(
                f"{self.path} already exists; pass overwrite=True to replace it"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = temporary_sibling(self.path)
        logger.debug("writing %s via temporary %s", self.path, self.tmp_path)
        return self.tmp_path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tmp = self.tmp_path
        assert tmp is not None  # set in __enter__
        if exc_type is not None:
            discard(tmp)
            return None  # re-raise
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(
                f"nothing was written to the temporary {tmp} for {self.path}; output not created"
            )
        try:
            self._commit(tmp)
        except BaseException:
            discard(tmp)
            raise
        return None

    def _commit(self, tmp: Path) -> None:
        final = self.path
        replacing_dir = final.exists() and (final.is_dir() or tmp.is_dir())
        if not replacing_dir:
            os.replace(tmp, final)  # atomic for files on POSIX and Windows
            return
        backup = temporary_sibling(final, tag="old")
        os.replace(final, backup)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(backup, final)  # put the previous output back
            raise
        remove_path(backup)
