"""How slices grouped several per forward pass reach the device and come back.

They travel raw (1 byte a voxel for uint8) and are normalised where the network runs, through the
normaliser's lookup table: the same float32 input, so the same labels, as normalising on the host.  And a
group's labels are collected only after the next group is launched (on a GPU the host then prepares a
group while the device computes the one before)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_blockwise import epfl_zarr_stack

from emseg.data import Normalizer
from emseg.inference import Predictor, predict_blockwise
from emseg.inference._tiling import PendingLabels
from emseg.io import read_image

WHOLE = (160, 224)  # one window holds a whole 150 x 200 slice


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return epfl_zarr_stack(tmp_path_factory.mktemp("raw_to_device"), 6, 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_the_lookup_table_is_the_normaliser_bit_for_bit(dtype):
    normalizer = Normalizer(mean=117.3, std=41.7)
    values = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, (5, 37, 41)).astype(dtype)
    table = normalizer.lookup_table(dtype)
    assert table.dtype == np.float32 and table.shape == (np.iinfo(dtype).max + 1,)
    np.testing.assert_array_equal(table[values], normalizer(values))  # exact, not close
    taken = torch.take(torch.from_numpy(table), torch.from_numpy(values.astype(np.int64)))
    assert torch.equal(taken, torch.from_numpy(normalizer(values)))
    assert normalizer.lookup_table(np.float32) is None and normalizer.lookup_table(np.int32) is None


def _device_batches(predictor):
    """Record the dtype of every batch the predictor sends to its device."""
    seen, to_device = [], predictor._to_device

    def spy(batch):
        seen.append(batch.dtype)
        return to_device(batch)

    predictor._to_device = spy
    return seen


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_raw_groups_give_the_labels_of_host_normalised_ones(stack, dtype, one_torch_thread):
    predictor = Predictor.from_checkpoint(stack["model"], window=WHOLE, batch_size=3, overlap=0.25, precision="fp32")
    raw = np.asarray(stack["raw"]).astype(dtype) - (0 if dtype == np.uint8 else 30)  # uint16: wraps, any value
    assert predictor.slices_per_forward(raw.shape[1:]) == 3
    seen = _device_batches(predictor)
    labels, _ = predictor.predict_volume(raw)
    # two groups of three slices: uint8 as read (one byte a voxel); uint16 normalised on the host
    assert seen == [torch.uint8 if dtype == np.uint8 else torch.float32] * 2
    seen.clear()
    host, _ = predictor.predict_volume(raw.astype(np.float32))  # float input: normalised on the host
    assert seen == [torch.float32, torch.float32]
    np.testing.assert_array_equal(labels, host)
    assert len(np.unique(labels)) > 1


def test_blockwise_raw_groups_match_the_in_memory_labels(stack, tmp_path, one_torch_thread):
    route = f"fp32-eager-nchw-t1-w{WHOLE[0]}x{WHOLE[1]}-b3"
    predict_blockwise(stack["model"], stack["path"], tmp_path / "b.zarr", route=route, block=(2, 150, 200),
                      progress=False)
    predictor = Predictor.from_checkpoint(stack["model"], window=WHOLE, batch_size=3, overlap=0.25, precision="fp32")
    expected, _ = predictor.predict_volume(np.asarray(stack["raw"]).astype(np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "b.zarr"), expected)


def _launch_and_collect_order(predictor):
    """Record, in order, each group launched (its first slice's index) and each group's labels collected."""
    events, launch = [], predictor._labels_group

    def spy(images, **kwargs):
        assert kwargs.get("deferred") is True
        pending = launch(images, **kwargs)
        k = sum(1 for e in events if e[0] == "launch")
        events.append(("launch", k))
        result = pending.result

        def collected():
            events.append(("collect", k))
            return result()

        pending.result = collected
        return pending

    predictor._labels_group = spy
    return events


def test_a_group_is_collected_after_the_next_one_is_launched(stack, tmp_path, one_torch_thread):
    predictor = Predictor.from_checkpoint(stack["model"], window=WHOLE, batch_size=2, overlap=0.25, precision="fp32")
    raw = np.asarray(stack["raw"])
    expected = np.concatenate([predictor.predict_labels_stack(raw[k:k + 2]) for k in range(0, 6, 2)])
    events = _launch_and_collect_order(predictor)
    labels, _ = predictor.predict_volume(raw)
    assert events == [("launch", 0), ("launch", 1), ("collect", 0), ("launch", 2), ("collect", 1), ("collect", 2)]
    np.testing.assert_array_equal(labels, expected)
    # a block of 6 slices (three groups): the same order, the same labels
    events.clear()
    block = predictor.predict_labels_block(raw, origin=(0, 0, 0), region=(slice(0, 6), slice(0, 150), slice(0, 200)),
                                           shape=raw.shape)
    assert events == [("launch", 0), ("launch", 1), ("collect", 0), ("launch", 2), ("collect", 1), ("collect", 2)]
    np.testing.assert_array_equal(block, expected)


def test_pending_labels_on_the_cpu_are_ready_and_widened_past_256_classes():
    argmax = torch.tensor([[[0, 3], [300, 7]]])
    wide = PendingLabels.from_device(argmax, 400).result()
    assert wide.dtype == np.uint16 and wide.tolist() == [[[0, 3], [300, 7]]]
    narrow = PendingLabels.from_device(argmax.clamp_max(255), 7).result()
    assert narrow.dtype == np.uint8 and narrow.tolist() == [[[0, 3], [255, 7]]]
