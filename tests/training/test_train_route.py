"""The training route: the probe picks one that runs and records it; training.route forces one; resume keeps it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import emseg
from emseg.config import ConfigError, load_config, parse_route
from emseg.models import build_model, load_checkpoint
from emseg.training._route import MIN_GAIN, PROBE_ENV, Route, choose_route


def _config(tmp_path, tiny_config, **training):
    data = yaml.safe_load(tiny_config.read_text())
    data["training"].update(training)
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_probe_picks_a_route_that_runs_and_records_it(tmp_path, tiny_config, cpu_bf16, monkeypatch):
    monkeypatch.setenv(PROBE_ENV, "1")  # the suite trains without the probe (tests/conftest.py)
    result = emseg.train(tiny_config, tmp_path / "run", progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    route = summary["route"]
    assert route["source"] == "probe"
    # the winner is one of the timed routes; none of them was faster by more than MIN_GAIN
    assert route["name"] in route["seconds_per_step"]
    assert min(route["seconds_per_step"].values()) >= (1 - MIN_GAIN) * route["seconds_per_step"][route["name"]]
    # bf16 is only a candidate where the machine has it natively, and then the first one timed (what
    # precision: auto means there; a 12-second budget leaves the probe time for few others)
    assert next(iter(route["seconds_per_step"])).startswith("bf16" if cpu_bf16 else "fp32")
    assert any(name.startswith("bf16") for name in route["seconds_per_step"]) == cpu_bf16
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["route"] for line in lines] == [route["name"]] * len(lines)
    for name in ("model.pt", "last.pt"):
        assert load_checkpoint(result.run_dir / name)["training"]["route"]["name"] == route["name"]


def test_configured_route_is_used(tmp_path, tiny_config):
    result = emseg.train(_config(tmp_path, tiny_config, route="bf16-cl-t1"), tmp_path / "run", progress=False)
    route = json.loads((result.run_dir / "summary.json").read_text())["route"]
    assert (route["name"], route["source"], route["seconds_per_step"]) == ("bf16-cl-t1", "configured", {})
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("name", ["bf17", "fp32-cl-cl", "bf16-t0", "auto-t2", "FP32"])
def test_unknown_route_names_the_key_and_the_grammar(tmp_path, tiny_config, name):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, tiny_config, route=name))
    message = str(err.value)
    assert "training.route" in message and repr(name) in message and "PRECISION[-cl][-compile][-tN]" in message


def test_route_names_round_trip():
    assert parse_route("bf16-cl-compile-t4") == {"precision": "bf16", "channels_last": True, "compile": True,
                                                 "threads": 4}
    for name in ("fp32-t1", "bf16-cl-t2", "fp32-compile-t3"):
        assert Route.parse(name).name == name


def test_probe_leaves_weights_and_random_state_unchanged(monkeypatch):
    monkeypatch.setenv(PROBE_ENV, "1")
    model = build_model("unet2d", in_channels=1, num_classes=3, options={"features": [4, 8]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    rng_before = torch.get_rng_state()
    choice = choose_route(model, input_shape=(2, 1, 32, 32), device=torch.device("cpu"), configured="auto",
                          precision="auto", num_threads=1, budget_s=60.0)
    assert choice.source == "probe" and len(choice.seconds_per_step) >= 2  # fp32 and fp32-cl at least
    assert choice.route.name in choice.seconds_per_step and choice.probe_s < 0.03 * 60.0 + 1.0
    assert torch.equal(torch.get_rng_state(), rng_before)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_keeps_the_recorded_route(tmp_path, tiny_config):
    run = tmp_path / "run"
    emseg.train(_config(tmp_path, tiny_config, route="fp32-cl-t1"), run, progress=False)
    # resume with route: auto and more epochs: the recorded route, no probe
    emseg.train(_config(tmp_path, tiny_config, epochs=3), run, resume=True, progress=False)
    route = json.loads((run / "summary.json").read_text())["route"]
    assert (route["name"], route["source"]) == ("fp32-cl-t1", "resumed")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["route"] for line in lines] == ["fp32-cl-t1"] * 3


def test_unknown_route_on_the_command_line_is_one_message(tmp_path, tiny_config):
    from typer.testing import CliRunner

    from emseg.cli import app

    config = _config(tmp_path, tiny_config, route="bf16-fast")
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "training.route" in result.output and "'bf16-fast'" in result.output and "bf16-cl-t2" in result.output
    assert not (tmp_path / "run").exists()


def test_without_the_probe_auto_is_what_precision_auto_means(tmp_path, tiny_config, cpu_bf16, monkeypatch):
    monkeypatch.setenv(PROBE_ENV, "0")
    result = emseg.train(tiny_config, tmp_path / "run", progress=False)
    route = json.loads((result.run_dir / "summary.json").read_text())["route"]
    assert route["source"] == f"default ({PROBE_ENV}=0)" and route["seconds_per_step"] == {}
    assert Route.parse(route["name"]).precision == ("bf16" if cpu_bf16 else "fp32")
    assert not Route.parse(route["name"]).channels_last
