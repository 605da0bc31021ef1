"""The memory-aware tuner: each route's working memory is measured, scaled to a whole slice and weighed."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from test_blockwise import epfl_zarr_stack
from test_route_batch import _FakeClock

from emseg.inference import predict_blockwise, read_run_metadata
from emseg.inference import _route
from emseg.inference._route import MAX_MEMORY_GB, Route

BLOCK = (3, 150, 200)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A 7 x 150 x 200 crop of the EPFL volume as zarr, and a tiny random unet2d (7 classes, 64-px window)."""
    return epfl_zarr_stack(tmp_path_factory.mktemp("route_memory"), 7, 3)


def test_working_memory_sees_an_allocation_and_not_a_no_op():
    def allocate():
        a = np.ones(50_000_000, np.float32)  # 200 MB, touched
        return float(a[::4096].sum())

    value, grown = _route._working_memory(allocate)
    assert value == pytest.approx(50_000_000 / 4096, abs=1)
    assert grown is not None and grown >= 0.15
    _, idle = _route._working_memory(lambda: None)
    assert idle is not None and idle < 0.05


def test_window_pixels_shrink_to_the_slice():
    assert _route._window_pixels((768, 1024), 16, (512, 1024)) == 512 * 1024
    assert _route._window_pixels((256, 256), 16, (512, 1024)) == 256 * 256
    assert _route._window_pixels((256, 256), 16, (100, 100)) == 112 * 112  # padded to the divisor
    assert _route._window_pixels(None, 1, (30, 40)) == 1200


class _FakePredictor:
    """Labels all zero (every route agrees); more slices per forward are faster and take more memory."""

    last_memory = [0.0]

    def __init__(self, route, clock, plane):
        self.route, self.clock = route, clock
        self.window = route.window or (32, 32)
        self.divisor = 1
        self.batch = route.batch_size if route.window is not None else 1

    def slices_per_forward(self, shape):
        return self.batch

    def predict_labels_stack(self, images):
        rate = {1: 1.0, 2: 1.5, 4: 2.0}[self.batch] * (1.2 if self.route.precision == "bf16" else 1.0)
        self.clock.now += images.size / rate / 1e6
        _FakePredictor.last_memory[0] = 0.25 * self.batch * images[0].size / 4096  # GB on the probe's crop
        return np.zeros(images.shape, np.uint8)


def _tune(monkeypatch, room, plane=(64, 64)):
    clock = _FakeClock()
    monkeypatch.setattr(_route, "_clock", clock)
    monkeypatch.setattr(_route, "_working_memory", lambda call: (call(), _FakePredictor.last_memory[0]))
    probe = _route._Probe(lambda r: _FakePredictor(r, clock, plane), np.zeros((4, 64, 64), np.uint8), plane=plane)
    reference = Route("fp32", threads=1, window=None, batch_size=4)
    best, result = _route._tune(probe, reference=reference, whole=plane, cores=1, bf16=True, int8=False,
                                threshold=0.995, voxels=10**6, memory_room_gb=room)
    return best, result, probe.results


@pytest.mark.parametrize(("room", "batch", "over"), [
    (None, 4, False),   # no limit: the fastest, 4 slices per forward (1 GB)
    (0.6, 2, False),    # 0.5 GB for 2 slices fits, 1 GB for 4 does not
    (0.3, 1, False),    # one slice per forward (0.25 GB) fits
    (0.1, 1, True),     # nothing fits: the agreeing route of least memory
])
def test_the_tuner_runs_the_fastest_route_that_fits_the_memory(monkeypatch, room, batch, over):
    best, result, results = _tune(monkeypatch, room)
    assert result["slices"] == batch and best.precision == "bf16"  # slices per forward (1: either window)
    assert result["memory_gb"] == pytest.approx(0.25 * batch)
    assert bool(result.get("over_memory")) is over
    if room is not None:  # every faster route it passed over was over the limit
        faster = [r for r in results.values() if "mvox_s" in r and r["mvox_s"] > result["mvox_s"]]
        assert faster and all(r.get("over_memory") for r in faster)


def test_memory_is_scaled_from_the_probe_crop_to_the_whole_slice(monkeypatch):
    # the probe crops 64 rows of a 128-row slice: a whole-slice window needs twice the probe's memory there,
    # a 32 x 32 model window the same as on the probe
    _, _, results = _tune(monkeypatch, None, plane=(128, 64))
    assert results["bf16-eager-nchw-t1-w128x64-b4"]["memory_gb"] == pytest.approx(2 * 1.0)
    assert results["fp32-eager-nchw-t1-wmodel-b4"]["memory_gb"] == pytest.approx(0.25)


def test_a_tuned_run_records_its_memory_and_a_tiny_limit_runs_the_least_memory_route(stack, tmp_path):
    out = tmp_path / "tuned.zarr"
    predict_blockwise(stack["model"], stack["path"], out, route="auto", block=BLOCK, max_blocks=1, progress=False)
    record = read_run_metadata(out)["route"]
    timed = [c for c in record["candidates"] if "mvox_s" in c]
    assert timed and all(c["memory_gb"] >= 0 for c in timed)
    assert record["max_memory_gb"] == MAX_MEMORY_GB
    assert record["memory_estimate_gb"] >= record["base_memory_gb"] > _route.ENGINE_MEMORY_GB
    assert "memory_note" not in record  # a tiny network fits 2 GB

    out = tmp_path / "tight.zarr"
    predict_blockwise(stack["model"], stack["path"], out, route="auto", block=BLOCK, max_blocks=1, progress=False,
                      max_memory_gb=0.01)
    record = read_run_metadata(out)["route"]
    assert "no agreeing route fits 0.01 GB" in record["memory_note"]
    agreeing = [c for c in record["candidates"] if "mvox_s" in c and c["agreement"] >= record["threshold"]]
    chosen = next(c for c in record["candidates"] if c["name"] == record["name"])
    assert chosen["memory_gb"] == min(c["memory_gb"] for c in agreeing)


def test_max_memory_must_be_positive(stack, tmp_path):
    with pytest.raises(ValueError, match="--max-memory -1: give a positive number of GB, or 0 for no limit"):
        predict_blockwise(stack["model"], stack["path"], tmp_path / "x.zarr", route="auto", max_memory_gb=-1)
    assert not (tmp_path / "x.zarr").exists()


def test_the_cli_default_is_the_library_default():
    from emseg.cli._main import predict

    assert inspect.signature(predict).parameters["max_memory"].default == MAX_MEMORY_GB


def test_routes_that_would_pass_the_limit_while_probing_are_not_run(monkeypatch):
    # 1 GB in use, limit 2 GB: the memory per pixel measured so far predicts the batches of whole 64 x 64
    # slices that would pass the limit: those are recorded, never run; the engines are compared at one slice
    clock, ran = _FakeClock(), []
    monkeypatch.setattr(_route, "_clock", clock)
    monkeypatch.setattr(_route, "_rss_gb", lambda: 1.0)
    monkeypatch.setattr(_route, "_working_memory", lambda call: (call(), _FakePredictor.last_memory[0]))

    class Recording(_FakePredictor):
        def predict_labels_stack(self, images):
            ran.append(self.route.name)
            out = super().predict_labels_stack(images)
            if self.route.window is None:  # 4 windows of 32 x 32: 0.4 GB, so 4 whole slices would need 1.6 GB
                _FakePredictor.last_memory[0] = 0.4
            return out

    probe = _route._Probe(lambda r: Recording(r, clock, (64, 64)), np.zeros((4, 64, 64), np.uint8),
                          plane=(64, 64), limit_gb=2.0)
    reference = Route("fp32", threads=1, window=None, batch_size=4)
    best, result = _route._tune(probe, reference=reference, whole=(64, 64), cores=1, bf16=True, int8=False,
                                threshold=0.995, voxels=10**6, memory_room_gb=1.0)
    skipped = {n: r for n, r in probe.results.items() if "skipped" in r}
    assert skipped and all(n not in ran for n in skipped)
    assert all("over the 2 GB limit" in r["skipped"] and r["memory_gb"] > 1.0 for r in skipped.values())
    assert not any(n.endswith("-w64x64-b4") for n in ran) and "bf16-eager-nchw-t1-w64x64-b2" in ran
    assert result["memory_gb"] <= 1.0 and best.name in ran
