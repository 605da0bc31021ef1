"""The example configuration the README walks through stays valid."""

from __future__ import annotations

from pathlib import Path

from emseg.config import load_config
from emseg.data import load_training_data

ROOT = Path(__file__).resolve().parents[1]


def test_isbi_example_config_loads_and_checks_data():
    cfg = load_config(ROOT / "examples" / "isbi2012.yaml")
    assert cfg.data.classes == ["interior", "membrane"]
    train, val = load_training_data(cfg)
    assert len(train) == 21 and len(val) == 3


def test_readme_shows_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "examples/isbi2012.yaml" in readme


def test_epfl_benchmark_example_validates():
    from emseg.benchmark import load_bench_config
    from emseg.benchmark._config import _plan

    bench = load_bench_config(ROOT / "examples" / "bench_epfl.yaml")
    names = [run["name"] for run in _plan(bench)]
    # four networks x one loss + the forest (losses do not apply to it)
    assert len(names) == 5 and "random-forest__none__seed0" in names
    assert sum(name.endswith("__dice-ce__seed0") for name in names) == 4
    from emseg.models import MODELS

    assert all(model.name in MODELS for model in bench.models)
