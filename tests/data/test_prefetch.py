"""The prefetching batch stream: the same batches as the inline sampler + augmentation, and the same random state."""

from __future__ import annotations

import numpy as np
import pytest

from emseg.config import AugmentConfig
from emseg.data import BatchStream, PatchSampler, VolumePatchSampler, augment_batch, augment_volume_batch
from emseg.data import epoch_elastic_field

ITERATIONS, BATCH = 3, 2


def _slices(seed=0):
    g = np.random.default_rng(seed)
    images = [g.normal(size=(1, 48, 56)).astype(np.float32) for _ in range(3)]
    labels = [(g.random((48, 56)) * 3).astype(np.int16) for _ in range(3)]
    weights = [g.random((48, 56)).astype(np.float32) for _ in range(3)]
    return images, labels, weights


def _sampler(rng, *, mode="grid", weights=None):
    images, labels, _ = _slices()
    return PatchSampler(images, labels, patch_size=(32, 32), num_classes=3, rng=rng, weights=weights, mode=mode,
                        spacing=(8, 8))


def _inline_reference(config, seed, epochs, *, mode, weights):
    """What the trainer did before the stream existed: field per epoch, then sample + augment per step."""
    rng = np.random.default_rng(seed)
    sampler = _sampler(rng, mode=mode, weights=weights)
    out, states = [], []
    for _ in range(epochs):
        field = epoch_elastic_field(config, (32, 32), rng)
        for _ in range(ITERATIONS):
            batch = sampler.sample(BATCH)
            x, y, *w = augment_batch(*batch[:2], config, rng, weights=batch[2] if weights else None,
                                     epoch_field=field)
            out.append((x, y, w[0] if w else None))
            states.append((rng.bit_generator.state, sampler.state_dict()))
    return out, states


@pytest.mark.parametrize("prefetch", [0, 1, 3])
@pytest.mark.parametrize("mode,elastic,use_weights", [("grid", "guay", True), ("foreground", "simard", False)])
def test_stream_yields_the_inline_batches_and_random_states(prefetch, mode, elastic, use_weights):
    config = AugmentConfig(elastic=elastic, rotation=20.0, spatial_probability=0.7, noise_std=0.1)
    weights = _slices()[2] if use_weights else None
    expected, states = _inline_reference(config, 7, 2, mode=mode, weights=weights)
    rng = np.random.default_rng(7)
    with BatchStream(_sampler(rng, mode=mode, weights=weights), augment=augment_batch, config=config, rng=rng,
                     batch_size=BATCH, iterations_per_epoch=ITERATIONS, patch_shape=(32, 32),
                     weights=use_weights, prefetch=prefetch) as stream:
        for k, (x, y, w) in enumerate(expected):
            got = stream.next()
            np.testing.assert_array_equal(got[0], x)
            np.testing.assert_array_equal(got[1], y)
            assert (got[2] is None) == (w is None)
            if w is not None:
                np.testing.assert_array_equal(got[2], w)
            # the state after the batch handed out, even though the worker has drawn ahead
            assert stream.random_state() == states[k]
    assert any(not np.array_equal(expected[0][0], b[0]) for b in expected[1:])  # the batches do differ


def test_stream_resumes_from_a_stored_state():
    """Restoring the state after the first epoch (as --resume does from last.pt) goes on with the second."""
    config = AugmentConfig(elastic="guay")
    rng = np.random.default_rng(3)
    with BatchStream(_sampler(rng), augment=augment_batch, config=config, rng=rng, batch_size=BATCH,
                     iterations_per_epoch=ITERATIONS, patch_shape=(32, 32), prefetch=2) as stream:
        for _ in range(ITERATIONS):
            stream.next()
        numpy_state, sampler_state = stream.random_state()  # the worker has drawn ahead by now
        second_epoch = [stream.next() for _ in range(ITERATIONS)]
    rng = np.random.default_rng(99)
    sampler = _sampler(rng)
    rng.bit_generator.state = numpy_state
    sampler.load_state_dict(sampler_state)
    with BatchStream(sampler, augment=augment_batch, config=config, rng=rng, batch_size=BATCH,
                     iterations_per_epoch=ITERATIONS, patch_shape=(32, 32), prefetch=2) as resumed:
        for x, y, _ in second_epoch:
            got = resumed.next()
            np.testing.assert_array_equal(got[0], x)
            np.testing.assert_array_equal(got[1], y)


def test_volume_stream_matches_inline():
    g = np.random.default_rng(1)
    images = [g.normal(size=(1, 6, 40, 40)).astype(np.float32)]
    labels = [(g.random((6, 40, 40)) * 2).astype(np.int16)]
    config = AugmentConfig()

    def sampler(rng):
        return VolumePatchSampler(images, labels, patch_size=(4, 32, 32), num_classes=2, rng=rng)

    rng = np.random.default_rng(5)
    ref_sampler = sampler(rng)
    expected = [augment_volume_batch(*ref_sampler.sample(2), config, rng, epoch_field=None) for _ in range(4)]
    rng2 = np.random.default_rng(5)
    with BatchStream(sampler(rng2), augment=augment_volume_batch, config=config, rng=rng2, batch_size=2,
                     iterations_per_epoch=4, patch_shape=(4, 32, 32), prefetch=2) as stream:
        for x, y in expected:
            got = stream.next()
            np.testing.assert_array_equal(got[0], x)
            np.testing.assert_array_equal(got[1], y)


def test_worker_errors_reach_the_training_loop():
    class Broken:
        def state_dict(self):
            return {}

        def sample(self, batch_size):
            raise RuntimeError("cannot read patch")

    stream = BatchStream(Broken(), augment=augment_batch, config=AugmentConfig(), rng=np.random.default_rng(0),
                         batch_size=2, iterations_per_epoch=2, patch_shape=(32, 32), prefetch=2)
    with pytest.raises(RuntimeError, match="cannot read patch"):
        stream.next()
    stream.close()
