"""Budget-aware defaults: batch and patch size from the measured step time, the budget and the data."""

from __future__ import annotations

import json
import math

import numpy as np
import yaml

import emseg
from emseg.models import load_checkpoint
from emseg.training._budget import TARGET_STEPS, choose_sizes, object_diameter

COMMON = dict(batch0=8, patch0=256, min_patch=128, max_patch=512, min_batch=2)


def test_a_slow_machine_gets_smaller_batches_and_a_fast_one_larger():
    slow = choose_sizes(seconds_per_step=5.0, budget_s=1800, **COMMON)
    fast = choose_sizes(seconds_per_step=0.1, budget_s=1800, **COMMON)
    assert slow["batch_size"] * slow["patch_size"] ** 2 < 8 * 256 ** 2 < fast["batch_size"] * fast["patch_size"] ** 2
    # 5 s per step buys 306 steps at the defaults; the choice gets closer to the target
    assert slow["steps_at_defaults"] == int(0.85 * 1800 / 5.0)
    assert abs(math.log(slow["expected_steps"] / TARGET_STEPS)) < abs(math.log(slow["steps_at_defaults"] / TARGET_STEPS))
    # the budget counts too: twice the minutes, more pixels per step
    longer = choose_sizes(seconds_per_step=5.0, budget_s=3600, **COMMON)
    assert longer["batch_size"] * longer["patch_size"] ** 2 >= slow["batch_size"] * slow["patch_size"] ** 2


def test_the_data_limits_and_set_keys_are_kept():
    big_objects = choose_sizes(seconds_per_step=20.0, budget_s=600, **{**COMMON, "min_patch": 384})
    assert big_objects["patch_size"] >= 384
    rare = choose_sizes(seconds_per_step=20.0, budget_s=600, **{**COMMON, "min_batch": 4})
    assert rare["batch_size"] >= 4
    fixed = choose_sizes(seconds_per_step=20.0, budget_s=600, set_batch=8, **COMMON)
    assert fixed["batch_size"] == 8 and fixed["patch_size"] < 256


def test_object_diameter_of_disks():
    lab = np.zeros((200, 200), np.int16)
    yy, xx = np.mgrid[:200, :200]
    lab[(yy - 50) ** 2 + (xx - 50) ** 2 <= 20 ** 2] = 1  # diameter ~40
    lab[(yy - 150) ** 2 + (xx - 150) ** 2 <= 10 ** 2] = 2
    lab[0, :] = -100  # ignored pixels do not count
    d = object_diameter([lab], background=0, ignore=-100)
    assert 36 < d < 41


def _config(tmp_path, tiny_config, **training):
    data = yaml.safe_load(tiny_config.read_text())
    data["training"] = {k: v for k, v in data["training"].items() if k not in ("batch_size", "patch_size")}
    data["training"].update(training)
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_chosen_sizes_are_used_stored_and_kept_on_resume(tmp_path, tiny_config):
    run = tmp_path / "run"
    # a 6-second budget: small sizes on any machine (steps stay quick)
    emseg.train(_config(tmp_path, tiny_config, max_minutes=0.1, epochs=1, iterations_per_epoch=1), run,
                progress=False)
    budget = json.loads((run / "summary.json").read_text())["budget"]
    assert budget["batch_size"] in (2, 4, 8, 16) and 128 <= budget["patch_size"] <= 192  # the crop is 192 x 256
    assert budget["seconds_per_step_at_defaults"] > 0
    stored = yaml.safe_load((run / "config.yaml").read_text())["training"]
    assert stored["batch_size"] == budget["batch_size"] and stored["patch_size"] == [budget["patch_size"]] * 2
    assert load_checkpoint(run / "last.pt")["training"]["budget"] == budget
    emseg.train(_config(tmp_path, tiny_config, max_minutes=0.1, epochs=2, iterations_per_epoch=1), run,
                resume=True, progress=False)
    assert json.loads((run / "summary.json").read_text())["budget"] == budget  # reused, not measured again
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["batch_size"] == budget["batch_size"]


def test_set_sizes_or_switched_off_leave_the_defaults(tmp_path, tiny_config):
    result = emseg.train(tiny_config, tmp_path / "a", progress=False)  # batch and patch set: nothing to adapt
    assert "budget" not in json.loads((result.run_dir / "summary.json").read_text())
    # switched off: the patch (unset) keeps the default, fitted to the 192 x 256 crop
    result = emseg.train(_config(tmp_path, tiny_config, adapt_to_budget=False, batch_size=1, epochs=1,
                                 iterations_per_epoch=1), tmp_path / "b", progress=False)
    assert "budget" not in json.loads((result.run_dir / "summary.json").read_text())
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["training"]["patch_size"] == [192, 256]
