"""Training batches drawn and augmented ahead, in a background thread, in exactly the inline order.

The trainer draws, per epoch, Guay's elastic field of the epoch (when that
augmentation is on) and then ``iterations_per_epoch`` batches, each
``sampler.sample`` followed by the augmentation, all from one random generator.
:class:`BatchStream` produces that very sequence, either inline (``prefetch=0``)
or in a daemon thread that keeps up to ``prefetch`` batches ready while the
optimiser runs (numpy and torch release the GIL for most of their work), so the
batches of a seed are the same either way.

Because the worker runs ahead, the generator's state is not the state after the
batches the trainer has used: each batch carries the random state (generator and
sampler) right after it was drawn, and :meth:`BatchStream.random_state` returns
the one of the last batch handed out: the state ``last.pt`` stores, as before.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from emseg.config import AugmentConfig
from emseg.data._augment import epoch_elastic_field

__all__ = ["BatchStream"]

class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BatchStream:
    """Augmented training batches ``(x, y, w)`` (``w`` ``None`` without weight maps), one per :meth:`next`.

    Args:
        sampler: a :class:`~emseg.data.PatchSampler` or :class:`~emseg.data.VolumePatchSampler` drawing from ``rng``.
        augment: :func:`~emseg.data.augment_batch` or :func:`~emseg.data.augment_volume_batch`.
        config: the augmentation settings.
        rng: the generator of the sampler and the augmentation (owned by the stream while it runs).
        batch_size, iterations_per_epoch: as ``training``.
        patch_shape: the patch; its last two axes size the epoch's elastic field.
        weights: the sampler returns weight maps (``training.weight_map``).
        prefetch: batches kept ready by the worker thread; 0 draws them inline, in :meth:`next`.
    """

    def __init__(self, sampler: Any, *, augment: Callable, config: AugmentConfig, rng: np.random.Generator,
                 batch_size: int, iterations_per_epoch: int, patch_shape: tuple[int, ...], weights: bool = False,
                 prefetch: int = 0) -> None:
        self.sampler, self.augment, self.config, self.rng = sampler, augment, config, rng
        self.batch_size, self.iterations_per_epoch = batch_size, iterations_per_epoch
        self.patch_shape, self.weights, self.prefetch = tuple(patch_shape), weights, int(prefetch)
        self._state = self._snapshot()
        self._items: Iterator | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _snapshot(self) -> tuple[dict, dict]:
        return self.rng.bit_generator.state, self.sampler.state_dict()

    def _generate(self) -> Iterator[tuple[tuple, tuple[dict, dict]]]:
        while True:
            field = epoch_elastic_field(self.config, self.patch_shape[-2:], self.rng)
            for _ in range(self.iterations_per_epoch):
                batch = self.sampler.sample(self.batch_size)
                x, y, *w = self.augment(*batch[:2], self.config, self.rng,
                                        weights=batch[2] if self.weights else None, epoch_field=field)
                yield (x, y, w[0] if w else None), self._snapshot()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self._generate():
                if not self._put(item):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the training loop, which raises it
            self._put(_Failure(err))

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The next batch (the worker starts on the first call, after any :meth:`load_random_state`)."""
        if self.prefetch <= 0:
            if self._items is None:
                self._items = self._generate()
            batch, self._state = next(self._items)
            return batch
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._work, name="emseg-batches", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        batch, self._state = item
        return batch

    def random_state(self) -> tuple[dict, dict]:
        """``(generator state, sampler state)`` right after the last batch :meth:`next` returned."""
        return self._state

    def close(self) -> None:
        """Stop the worker (batches drawn ahead are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._items = None

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
