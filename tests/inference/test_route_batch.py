"""Routes with several slices per forward pass (``bN`` with a whole-slice window) and the torch.compile rule."""

from __future__ import annotations

import numpy as np
import pytest
from test_blockwise import epfl_zarr_stack

from emseg.inference import Predictor, Route, predict_blockwise, read_run_metadata
from emseg.inference import _route
from emseg.inference._block_layout import choose_block
from emseg.io import read_image

WHOLE = (160, 224)  # one window holds a whole 150 x 200 slice (the tiny unet2d's divisor is 2)
BLOCK = (3, 150, 200)  # 3-slice blocks cut the groups of 2 and 4 slices


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A 7 x 150 x 200 crop of the EPFL volume as zarr, and a tiny random unet2d (7 classes, 64-px window)."""
    return epfl_zarr_stack(tmp_path_factory.mktemp("route_batch"), 7, 3)


def _forward_batches(predictor):
    """Record the batch size of every forward pass of ``predictor``."""
    seen, forward = [], predictor._forward

    def spy(batch):
        seen.append(int(batch.shape[0]))
        return forward(batch)

    predictor._forward = spy
    return seen


@pytest.mark.parametrize("batch", [2, 4])
def test_several_slices_per_forward_give_the_labels_of_batch_one(stack, batch, one_torch_thread):
    one = Predictor.from_checkpoint(stack["model"], window=WHOLE, batch_size=1, overlap=0.25, precision="fp32")
    many = Predictor.from_checkpoint(stack["model"], window=WHOLE, batch_size=batch, overlap=0.25, precision="fp32")
    assert one.slices_per_forward((150, 200)) == 1 and many.slices_per_forward((150, 200)) == batch
    # with the model's own 64-px windows the batch is windows of one slice, as before
    assert Predictor.from_checkpoint(stack["model"], batch_size=batch).slices_per_forward((150, 200)) == 1
    seen = _forward_batches(many)
    expected, _ = one.predict_volume(stack["raw"])
    labels, _ = many.predict_volume(stack["raw"])
    assert seen == [batch] * (7 // batch) + ([7 % batch] if 7 % batch else [])  # groups from z = 0, whole slices
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(many.predict_labels_stack(stack["raw"][:3]), expected[:3])
    # blocks are whole groups where the engine chooses them
    assert choose_block(many, (30, 150, 200))[0] == 30 // batch * batch


@pytest.mark.parametrize("batch", [2, 4])
def test_a_forced_batched_route_is_honoured_blockwise_and_resumed(stack, tmp_path, batch, one_torch_thread):
    name = f"fp32-eager-nchw-t1-w{WHOLE[0]}x{WHOLE[1]}-b{batch}"
    out = tmp_path / "b.zarr"
    predict_blockwise(stack["model"], stack["path"], out, route=name, block=BLOCK, max_blocks=1, progress=False)
    meta = read_run_metadata(out)
    assert meta["status"] == "running" and meta["route"]["name"] == name
    assert meta["predictor_options"]["batch_size"] == batch and meta["predictor_options"]["window"] == list(WHOLE)
    assert meta["route"]["candidates"][-1]["slices"] == min(batch, 4)  # timed on as many probe slices as it batches

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run keeps its recorded route")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_route, "_Probe", no_probe)
        predict_blockwise(stack["model"], stack["path"], out, block=BLOCK, progress=False)  # resume
    meta = read_run_metadata(out)
    assert meta["status"] == "complete" and meta["route"]["name"] == name
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["predictor_options"].items()}
    expected, _ = Predictor.from_checkpoint(stack["model"], **options).predict_volume(stack["raw"])
    np.testing.assert_array_equal(np.asarray(read_image(out)), expected)  # blocks cut groups: still identical


def test_the_tuner_times_batched_whole_slice_routes_on_several_slices(stack, tmp_path):
    out = tmp_path / "tuned.zarr"
    predict_blockwise(stack["model"], stack["path"], out, route="auto", block=BLOCK, max_blocks=1, progress=False)
    record = read_run_metadata(out)["route"]
    assert record["probe"]["slices"] == 4
    timed = {c["name"]: c for c in record["candidates"] if "mvox_s" in c}
    batched = [c for n, c in timed.items() if "-w150x200-b" in n and not n.endswith("-b1")]
    assert {c["slices"] for c in batched} == {2, 4}  # b2 and b4 whole-slice routes: 2 and 4 slices per forward
    assert all(c["slices"] == 1 for n, c in timed.items() if "-wmodel-" in n)
    assert not any("-compile-" in n for n in timed)  # 7 slices of 150 x 200 never repay a compilation


def test_compile_routes_parse_and_are_fp32_or_bf16():
    route = Route.parse("bf16-compile-cl-t2-w768x1024-b2")
    assert route.compiled and not route.jit and route.name == "bf16-compile-cl-t2-w768x1024-b2"
    assert route.predictor_options()["compile"] is True
    assert "compile" not in Route.parse("bf16-eager-cl-t2-w768x1024-b2").predictor_options()
    with pytest.raises(ValueError, match="compile engine is for fp32/bf16"):
        Route.parse("int8-compile-nchw-t1-wmodel-b4")


@pytest.mark.parametrize(("voxels", "mvox_s", "setup_s", "gain", "pays"), [
    (10**9, 1.0, 35.0, 1.2, True),     # 1000 s, a sixth saved (167 s) > 3 set-ups (105 s)
    (10**8, 1.0, 35.0, 1.2, False),    # 100 s: 17 s saved < 105 s
    (10**9, 10.0, 35.0, 1.2, False),   # a fast route: 100 s
    (10**9, 1.0, 60.0, 1.2, False),    # 167 s < 180 s
    (10**9, 1.0, 35.0, 1.0, False),    # no gain, never
])
def test_compile_is_tried_only_when_its_setup_is_repaid(voxels, mvox_s, setup_s, gain, pays):
    assert _route.compile_pays(voxels, mvox_s, setup_s=setup_s, gain=gain) is pays


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _FakePredictor:
    """Labels all zero (every route agrees); each call advances the fake clock by the route's time."""

    def __init__(self, route, clock, rates, setup):
        self.route, self.clock, self.calls = route, clock, 0
        self.rate = rates["compile" if route.compiled else "eager"]  # MVox/s
        self.setup = setup if route.compiled else 0.0

    def slices_per_forward(self, shape):
        return self.route.batch_size if self.route.window is not None else 1

    def predict_labels_stack(self, images):
        self.clock.now += (self.setup if self.calls == 0 else 0.0) + images.size / self.rate / 1e6
        self.calls += 1
        return np.zeros(images.shape, np.uint8)


@pytest.mark.parametrize(("voxels", "compile_rate", "setup", "chosen"), [
    (10**7, 2.0, 30.0, False),       # small volume: compile is not even timed
    (10**10, 2.0, 30.0, True),       # 5000 s at 1 MVox/s, 2500 s saved: compiled
    (10**10, 1.005, 30.0, False),    # timed, but 50 s saved do not repay 2 more compilations (60 s)
    (10**10, 2.0, 3000.0, False),    # timed, the measured set-up is not repaid
])
def test_the_tuner_compiles_only_when_the_measured_setup_pays(monkeypatch, voxels, compile_rate, setup, chosen):
    clock = _FakeClock()
    monkeypatch.setattr(_route, "_clock", clock)
    rates = {"eager": 1.0, "compile": compile_rate}
    probe = _route._Probe(lambda r: _FakePredictor(r, clock, rates, setup), np.zeros((4, 64, 64), np.uint8))
    reference = Route("fp32", threads=1, window=None, batch_size=4)
    best, result = _route._tune(probe, reference=reference, whole=(64, 64), cores=1, bf16=False, int8=False,
                                threshold=0.995, voxels=voxels)
    compiled = [r for n, r in probe.results.items() if "-compile-" in n]
    assert bool(compiled) == (voxels > 10**8)
    assert best.compiled is chosen
    if compiled:
        assert compiled[0]["setup_s"] == pytest.approx(setup)
        assert compiled[0]["repaid"] is chosen
