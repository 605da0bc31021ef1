"""The engine's reader and writer threads (``io_threads``): same labels, blocks marked in order after their
own write, a failure keeps every finished block, the default per device, bad values refused."""

from __future__ import annotations

import numpy as np
import pytest
from test_blockwise import epfl_zarr_stack

from emseg.inference import predict_blockwise, read_run_metadata
from emseg.inference import _blockwise
from emseg.inference._run_state import finished_blocks
from emseg.io import read_image


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Six slices of a 150 x 200 EPFL crop as zarr and a tiny random unet2d beside it."""
    return epfl_zarr_stack(tmp_path_factory.mktemp("io"), 6, 1)


class _Slices:
    """A blockwise predictor of one block per slice: labels = the raw voxels mod 7, failing on slice ``fail``."""

    classes = [str(i) for i in range(7)]

    def __init__(self, fail: int | None = None):
        self.fail, self.calls = fail, []

    def block_input(self, region, shape):
        return region

    def predict_labels_block(self, data, *, origin, region, shape):
        self.calls.append(region[0].start)
        if region[0].start == self.fail:
            raise RuntimeError(f"no labels for slice {self.fail}")
        return (np.asarray(data) % 7).astype(np.uint8)

    def predict_proba_block(self, data, **where):  # the interface's other half; the engine uses the labels
        return np.moveaxis(np.eye(7, dtype=np.float32)[self.predict_labels_block(data, **where)], -1, 0)


def test_more_reader_and_writer_threads_give_the_same_labels_and_markers(stack, tmp_path):
    one = predict_blockwise(stack["model"], stack["path"], tmp_path / "one.zarr", block=(1, 150, 200),
                            io_threads=1, progress=False)
    three = predict_blockwise(stack["model"], stack["path"], tmp_path / "three.zarr", block=(1, 150, 200),
                              io_threads=3, progress=False)
    np.testing.assert_array_equal(read_image(three), read_image(one))
    assert read_run_metadata(three)["status"] == "complete"
    assert finished_blocks(three) == finished_blocks(one) and len(finished_blocks(three)) == 6


def test_blocks_are_marked_in_order_after_their_write_and_a_failure_keeps_the_finished_ones(stack, tmp_path,
                                                                                          monkeypatch):
    marked, written = [], []
    write = _blockwise.write_block

    def recording_write(array, region, labels, is_2d):
        write(array, region, labels, is_2d)
        written.append(region[0].start)

    def recording_mark(output, index):
        assert index[0] in written  # a block is marked done only once its labels are written
        marked.append(index[0])

    monkeypatch.setattr(_blockwise, "write_block", recording_write)
    monkeypatch.setattr(_blockwise, "_mark", recording_mark)
    out = tmp_path / "fails.zarr"
    with pytest.raises(RuntimeError, match="no labels for slice 4"):
        predict_blockwise(_Slices(fail=4), stack["path"], out, block=(1, 150, 200), io_threads=3, progress=False)
    assert marked == [0, 1, 2, 3]  # every block computed before the failure was written and marked, in order
    monkeypatch.undo()
    # the same run with real markers: the four finished blocks are kept, and a rerun finishes it
    with pytest.raises(RuntimeError):
        predict_blockwise(_Slices(fail=4), stack["path"], out, block=(1, 150, 200), io_threads=3, progress=False,
                          overwrite=True)
    assert read_run_metadata(out)["status"] == "running" and {i[0] for i in finished_blocks(out)} == {0, 1, 2, 3}
    resumed = _Slices()
    predict_blockwise(resumed, stack["path"], out, block=(1, 150, 200), io_threads=3, progress=False)
    assert resumed.calls == [4, 5] and read_run_metadata(out)["status"] == "complete"
    np.testing.assert_array_equal(read_image(out), stack["raw"] % 7)


def test_the_default_is_one_thread_each_on_a_cpu_and_up_to_four_on_a_gpu(stack, monkeypatch):
    import torch

    from emseg.inference import Predictor

    cpu = Predictor.from_checkpoint(stack["model"], device=torch.device("cpu"))
    assert _blockwise.io_threads_for(cpu) == 1
    gpu = type("Gpu", (), {"device": torch.device("cuda", 0)})()
    for cores, expected in ((2, 1), (8, 2), (16, 4), (64, 4)):
        monkeypatch.setattr(_blockwise.os, "cpu_count", lambda cores=cores: cores)
        assert _blockwise.io_threads_for(gpu) == expected


@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_bad_io_threads_are_refused_before_any_work(stack, tmp_path, value):
    with pytest.raises(ValueError, match="--io-threads .*whole number of threads >= 1"):
        predict_blockwise(stack["model"], stack["path"], tmp_path / "o.zarr", io_threads=value, progress=False)
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(ValueError, match="--io-threads sets this process's reader and writer threads"):
        predict_blockwise(stack["model"], stack["path"], tmp_path / "o.zarr", io_threads=2, workers=2,
                          progress=False)


def test_our_own_local_cluster_keeps_dasks_info_log_to_itself(stack, tmp_path):
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    import distributed  # noqa: F401 - sets the "distributed" logger's level, as in a real run

    chatter = logging.getLogger("distributed")
    before, collect = chatter.level, Collect()
    chatter.addHandler(collect)
    try:
        predict_blockwise(stack["model"], stack["path"], tmp_path / "o.zarr", block=(3, 150, 200), workers=2,
                          progress=False)
    finally:
        chatter.removeHandler(collect)
    assert read_run_metadata(tmp_path / "o.zarr")["status"] == "complete"
    assert [r.getMessage() for r in collect.records if r.levelno < logging.WARNING] == []  # no "Scheduler at ..."
    assert chatter.level == before  # restored for whoever else uses distributed in this process
