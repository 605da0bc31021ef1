"""Routes (emseg.inference._route): the tuner, forced routes, resume, the constant network, refusals."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_blockwise import epfl_zarr_stack

from emseg.inference import AGREEMENT_THRESHOLD, Predictor, Route, predict_blockwise, read_run_metadata
from emseg.inference import _route
from emseg.io import read_image, write_image

BLOCK = (2, 150, 200)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A 4 x 150 x 200 crop of the EPFL volume as zarr, and a tiny random unet2d (7 classes, 64-px window)."""
    return epfl_zarr_stack(tmp_path_factory.mktemp("route"), 4, 2)


def _labels(path):
    return np.asarray(read_image(path))


def test_route_names_round_trip_and_bad_names_are_refused():
    route = Route("bf16", channels_last=True, threads=2, window=(768, 1024), batch_size=1)
    assert route.name == "bf16-eager-cl-t2-w768x1024-b1"
    assert Route.parse(route.name) == route
    assert Route.parse("fp32-jit-nchw-t1-wmodel-b4").predictor_options() == {
        "precision": "fp32", "jit": True, "channels_last": False, "network": "model", "batch_size": 4}
    with pytest.raises(ValueError, match="is not a route: use auto"):
        Route.parse("fast")
    with pytest.raises(ValueError, match="jit.*fp32 only"):
        Route.parse("bf16-jit-nchw-t1-wmodel-b4")


def test_tuner_picks_an_agreeing_route_records_it_and_a_resumed_run_keeps_it(volume, tmp_path, cpu_bf16,
                                                                           monkeypatch):
    out = tmp_path / "tuned.zarr"
    predict_blockwise(volume["model"], volume["path"], out, route="auto", block=BLOCK, max_blocks=1, progress=False)
    meta = read_run_metadata(out)
    record = meta["route"]
    assert meta["status"] == "running"
    assert record["requested"] == "auto" and record["agreement"] >= AGREEMENT_THRESHOLD
    assert record["mvox_s"] > 0 and record["reference"].startswith("fp32-eager-nchw-")
    chosen = Route.parse(record["name"])
    assert meta["threads"] == chosen.threads
    assert meta["predictor_options"]["precision"] == ("bf16" if chosen.precision == "bf16" else "fp32")
    names = [c["name"] for c in record["candidates"]]
    assert record["name"] in names and record["reference"] in names
    # bf16 routes are candidates only where the CPU has native bf16
    assert any(n.startswith("bf16-") for n in names) == cpu_bf16
    accepted = [c for c in record["candidates"] if "mvox_s" in c and c["agreement"] >= AGREEMENT_THRESHOLD]
    assert record["mvox_s"] == max(c["mvox_s"] for c in accepted)  # the fastest of those that agree

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run must keep its recorded route, not tune again")

    monkeypatch.setattr(_route, "_tune", no_probe)
    predict_blockwise(volume["model"], volume["path"], out, block=BLOCK, progress=False)  # resume, default route arg
    meta = read_run_metadata(out)
    assert meta["status"] == "complete" and meta["route"]["name"] == record["name"]
    # the same route forced on a fresh output gives bit-identical labels
    forced = tmp_path / "forced.zarr"
    predict_blockwise(volume["model"], volume["path"], forced, route=record["name"], block=BLOCK, progress=False)
    assert read_run_metadata(forced)["route"]["name"] == record["name"]
    np.testing.assert_array_equal(_labels(out), _labels(forced))


def test_a_forced_route_is_honoured(volume, tmp_path, one_torch_thread):
    name = "fp32-eager-cl-t1-w96x96-b1"
    out = tmp_path / "forced.zarr"
    predict_blockwise(volume["model"], volume["path"], out, route=name, block=BLOCK, progress=False)
    meta = read_run_metadata(out)
    assert meta["route"]["name"] == name and "refused" not in meta["route"]
    options = meta["predictor_options"]
    assert options["channels_last"] is True and options["window"] == [96, 96] and options["batch_size"] == 1
    assert meta["threads"] == 1
    # exactly what a predictor built with those options gives in memory (one thread, as the route says)
    predictor = Predictor.from_checkpoint(volume["model"], **{k: tuple(v) if isinstance(v, list) else v
                                                              for k, v in options.items()})
    assert predictor.channels_last and predictor.window == (96, 96)
    expected, _ = predictor.predict_volume(volume["raw"])
    np.testing.assert_array_equal(_labels(out), expected)


def test_the_constant_network_writes_exactly_the_constant_labels(volume, tmp_path):
    out = tmp_path / "constant.zarr"
    predict_blockwise(volume["model"], volume["path"], out, route="const-eager-nchw-t1-wmodel-b4", block=BLOCK,
                      progress=False)
    labels = _labels(out)
    assert labels.shape == volume["raw"].shape
    assert np.all(labels == 6)  # the last of the 7 classes, everywhere (0 would be the store's fill value)
    assert read_run_metadata(out)["status"] == "complete"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_bf16_and_int8_routes_are_refused_below_the_agreement_threshold(volume, tmp_path, cpu_bf16, precision,
                                                                         caplog):
    out = tmp_path / f"{precision}.zarr"
    with caplog.at_level(logging.WARNING, logger="emseg.inference._route"):
        predict_blockwise(volume["model"], volume["path"], out, route=f"{precision}-eager-nchw-t1-wmodel-b4",
                          agreement=1.01, block=BLOCK, progress=False)  # no route agrees on more than 100 %
    record = read_run_metadata(out)["route"]
    assert record["name"] == "fp32-eager-nchw-t1-wmodel-b4"
    assert record["refused"].startswith(f"route {precision}-eager-nchw-t1-wmodel-b4 refused")
    assert "below the 101.00 % threshold" in record["refused"]
    assert read_run_metadata(out)["predictor_options"]["precision"] == "fp32"
    assert "refused" in caplog.text


def test_int8_route_agrees_and_is_reproducible_on_resume(volume, tmp_path):
    """int8 accepted at a threshold it meets; a resumed run re-quantises on the recorded probe: same labels."""
    name = "int8-eager-nchw-t1-wmodel-b4"
    whole, part = tmp_path / "whole.zarr", tmp_path / "part.zarr"
    predict_blockwise(volume["model"], volume["path"], whole, route=name, agreement=0.0, block=BLOCK,
                      progress=False)
    record = read_run_metadata(whole)["route"]
    assert record["name"] == name and 0.5 < record["agreement"] <= 1.0 and "refused" not in record
    predict_blockwise(volume["model"], volume["path"], part, route=name, agreement=0.0, block=BLOCK,
                      max_blocks=1, progress=False)
    _route_cache_clear()
    predict_blockwise(volume["model"], volume["path"], part, route=name, agreement=0.0, block=BLOCK,
                      progress=False)
    np.testing.assert_array_equal(_labels(part), _labels(whole))


def _route_cache_clear():
    """Forget the predictors of this process, as a new process would (the int8 copy is rebuilt)."""
    from emseg.inference import _block_jobs

    _block_jobs._PREDICTORS.clear()


def test_route_conflicts_with_explicit_options(volume, tmp_path):
    with pytest.raises(ValueError, match="drop --precision"):
        predict_blockwise(volume["model"], volume["path"], tmp_path / "x.zarr", route="auto", precision="fp32")
    with pytest.raises(ValueError, match="use --workers 0"):
        predict_blockwise(volume["model"], volume["path"], tmp_path / "x.zarr", route="auto", workers=2)
    assert not (tmp_path / "x.zarr").exists()
    assert torch.get_num_threads() >= 1


def test_in_memory_prediction_runs_a_forced_route(volume, tmp_path, one_torch_thread):
    from emseg.inference import predict

    name = "fp32-eager-cl-t1-w96x96-b1"
    write_image(tmp_path / "raw.tif", volume["raw"])
    predict(volume["model"], tmp_path / "raw.tif", tmp_path / "labels.tif", route=name, progress=False)
    predictor = Predictor.from_checkpoint(volume["model"], overlap=_route.route_overlap(
        Predictor.from_checkpoint(volume["model"]).receptive_radius(), (96, 96)), **{
            k: v for k, v in Route.parse(name).predictor_options().items()})
    expected, _ = predictor.predict_volume(volume["raw"])
    np.testing.assert_array_equal(_labels(tmp_path / "labels.tif"), expected)


def test_cli_route_prints_the_route_and_refuses_bad_names(volume, tmp_path):
    from typer.testing import CliRunner

    from emseg.cli import app

    runner = CliRunner()
    out = tmp_path / "cli.zarr"
    result = runner.invoke(app, ["predict", str(volume["model"]), str(volume["path"]), str(out), "--quiet",
                                 "--route", "fp32-eager-nchw-t1-wmodel-b4", "--block", *map(str, BLOCK)])
    assert result.exit_code == 0, result.output
    assert "route: fp32-eager-nchw-t1-wmodel-b4 (" in result.output and "identical to fp32" in result.output
    bad = runner.invoke(app, ["predict", str(volume["model"]), str(volume["path"]), str(tmp_path / "b.zarr"),
                              "--route", "fastest"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "--route 'fastest' is not a route: use auto" in " ".join(bad.output.split())
    assert not (tmp_path / "b.zarr").exists()
    both = runner.invoke(app, ["predict", str(volume["model"]), str(volume["path"]), str(tmp_path / "c.zarr"),
                               "--route", "auto", "--threads", "2"])
    assert both.exit_code != 0 and "drop --threads, or drop --route" in " ".join(both.output.split())


def test_a_forced_route_loads_the_model_and_probes_its_receptive_field_once_each(volume, tmp_path, monkeypatch,
                                                                                  one_torch_thread):
    """Start-up: the predictor loaded with overlap "auto" also serves the route's base (same options once the
    overlap is resolved), so the model is not loaded again for it and the gradient probe is not repeated."""
    from emseg.inference import _block_jobs, _seam

    monkeypatch.setattr(_block_jobs, "_PREDICTORS", {})
    loads, probes = [], []
    real_load, real_probe = _block_jobs.load_predictor, _seam.probe_receptive_radius

    def counting_load(*args, **kwargs):
        loads.append(sorted(kwargs.items()))
        return real_load(*args, **kwargs)

    def counting_probe(*args, **kwargs):
        probes.append(args[2:])
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(_block_jobs, "load_predictor", counting_load)
    monkeypatch.setattr(_seam, "probe_receptive_radius", counting_probe)
    out = tmp_path / "forced.zarr"
    predict_blockwise(volume["model"], volume["path"], out, route="fp32-eager-cl-t1-w96x96-b1", block=BLOCK,
                      progress=False)
    assert len(probes) == 1  # was 2: once for "auto", again for the tuner's base loaded with the resolved overlap
    first = dict(loads[0])
    assert first["overlap"] == "auto"
    # then the fp32 NCHW reference of the agreement check and the route itself; never the first options again
    # with the resolved overlap (the tuner's base, which was a second load and a second probe before)
    assert len(loads) == 3, "\n".join(map(str, loads))
    assert all(dict(o)["overlap"] != "auto" and dict(o).get("window") == (96, 96) for o in loads[1:])
    # the labels are those of the route, as before (test_a_forced_route_is_honoured checks them in full)
    assert read_run_metadata(out)["route"]["name"] == "fp32-eager-cl-t1-w96x96-b1"
