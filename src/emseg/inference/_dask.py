"""Run block tasks on Dask distributed: a LocalCluster on this machine or an existing scheduler.

Each task (:func:`emseg.inference._blockwise.run_block`) loads the model once per
worker process (a module-level cache keyed by model path and checksum), reads its
block's input box from the input path, and writes its labels straight into the
zarr store; blocks are chunk-aligned, so writes never race.  The coordinator
marks a block done when its future completes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = ["run_blocks_dask"]


def _client(workers: int, scheduler: str | None):
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:  # pragma: no cover - dask[distributed] is a core dependency
        raise ImportError("--workers/--scheduler need dask distributed: pip install 'dask[distributed]'") from err
    if scheduler:
        logger.info("connecting to the Dask scheduler at %s", scheduler)
        return Client(scheduler), None
    import dask

    # No dashboard, so no use for the workers' statistical profiler: it samples every 10 ms and cost
    # about 12 % of throughput on 2 single-threaded workers (docs/BENCHMARKS.md). The nannies pass
    # this configuration on to the worker processes.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
    logger.info("started a Dask LocalCluster of %d worker processes (one block at a time each)", workers)
    return Client(cluster), cluster


def run_blocks_dask(job, todo: list[tuple[int, int, int]], *, workers: int = 0, scheduler: str | None = None,
                    on_done: Callable[[tuple[int, int, int], int], None],
                    client=None) -> None:
    """Submit one task per block index in ``todo``; call ``on_done(index, voxels)`` as each finishes.

    Args:
        job: a :class:`~emseg.inference._blockwise.BlockJob`.
        todo: block indices to run.
        workers: size of a new LocalCluster (ignored with ``scheduler`` or ``client``).
        scheduler: address of an existing scheduler, e.g. ``tcp://10.0.0.5:8786``
            (``SLURMCluster(...).scheduler_address``).
        client: an existing :class:`distributed.Client` to use as is.
    """
    from distributed import as_completed

    from emseg.inference._blockwise import run_block

    if not todo:
        return
    own = client is None
    cluster = None
    chatter = logging.getLogger("distributed")
    level = chatter.level
    if own and not scheduler:  # our own LocalCluster: its start and stop are ours to report, in one line
        chatter.setLevel(max(logging.WARNING, level))
    try:
        if own:
            client, cluster = _client(workers, scheduler)
        futures = [client.submit(run_block, job, index, pure=False, key=f"emseg-block-{'.'.join(map(str, index))}-"
                                 f"{job.model_sha256[:8]}-{id(job)}") for index in todo]
        try:
            for future in as_completed(futures):
                index, nvox = future.result()
                on_done(tuple(index), nvox)
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if own and client is not None:
            client.close()
            if cluster is not None:
                cluster.close()
        chatter.setLevel(level)
