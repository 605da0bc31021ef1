"""Many volumes in one ``emseg predict`` (emseg.inference._batch): patterns, templates, the route tuned
once, skipping finished outputs, resuming an unfinished one, failures that do not stop the batch."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from test_blockwise import EPFL_RAW, _checkpoint
from typer.testing import CliRunner

from emseg.cli import app
from emseg.inference import (
    BatchItem,
    batch_pairs,
    is_batch,
    predict,
    predict_blockwise,
    predict_many,
    read_run_metadata,
)
from emseg.io import read_image, write_image


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Three EPFL crops (two of 2 x 96 x 128, one of 3 x 80 x 112) as TIFF and zarr, and a tiny unet2d."""
    root = tmp_path_factory.mktemp("batch")
    raw = tifffile.imread(EPFL_RAW)
    crops = {"a": raw[0:2, 300:396, 200:328], "b": raw[2:4, 400:496, 100:228], "c": raw[4:7, 200:280, 300:412]}
    (root / "tif").mkdir()
    for name, crop in crops.items():
        tifffile.imwrite(root / "tif" / f"{name}.tif", crop)
        write_image(root / f"{name}.zarr", crop, chunks=(1, *crop.shape[1:]))
    return {"root": root, "crops": crops, "model": _checkpoint(root / "m.pt")}


def _labels(path) -> np.ndarray:
    return np.asarray(read_image(path))


def test_a_pattern_expands_to_sorted_inputs_and_the_template_names_each_output(tmp_path):
    for name in ("cell_2.tif", "cell_10.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    items = batch_pairs(str(tmp_path / "cell_*.tif"), str(tmp_path / "out" / "{stem}.zarr"),
                        str(tmp_path / "out" / "{name}.probs.tif"))
    assert [i.input for i in items] == [str(tmp_path / "cell_10.tif"), str(tmp_path / "cell_2.tif")]
    assert [i.output for i in items] == [str(tmp_path / "out" / f"cell_{n}.zarr") for n in (10, 2)]
    assert items[1].probabilities == str(tmp_path / "out" / "cell_2.tif.probs.tif")
    # the first wildcard component names the output, inside zarr stores and HDF5 files too
    for sample in ("s1", "s2"):
        (tmp_path / "runs" / f"{sample}.ome.zarr" / "raw").mkdir(parents=True)
        (tmp_path / "h5").mkdir(exist_ok=True)
        (tmp_path / "h5" / f"{sample}.h5").write_bytes(b"")
    items = batch_pairs(str(tmp_path / "runs" / "*.zarr" / "raw"), str(tmp_path / "{stem}_labels.zarr"))
    assert [i.input for i in items] == [str(tmp_path / "runs" / f"{s}.ome.zarr" / "raw") for s in ("s1", "s2")]
    assert [i.output for i in items] == [str(tmp_path / f"{s}_labels.zarr") for s in ("s1", "s2")]
    items = batch_pairs(str(tmp_path / "h5" / "s*.h5") + ":volumes/raw", str(tmp_path / "{stem}.h5") + ":labels")
    assert [(i.input, i.output) for i in items] == [
        (f"{tmp_path / 'h5' / s}.h5:volumes/raw", f"{tmp_path / s}.h5:labels") for s in ("s1", "s2")]
    assert is_batch("raw/*.tif", "x.zarr") and is_batch("raw/a.tif", "{stem}.zarr") and not is_batch("a.tif", "b.zarr")
    (tmp_path / "scan[1].tif").write_bytes(b"")  # a file named with glob characters is one input
    assert not is_batch(str(tmp_path / "scan[1].tif"), "labels.zarr") and is_batch(str(tmp_path / "scan[2].tif"), "l")


def test_bad_patterns_and_templates_are_refused_with_the_fix(tmp_path):
    for name in ("a.tif", "a.png", "b.tif"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"matches no file or folder.*quote the pattern"):
        batch_pairs(str(tmp_path / "missing" / "*.tif"), "{stem}.zarr")
    with pytest.raises(ValueError, match=r"matches 2 inputs, so OUTPUT .*out.zarr.* put \{stem\} in it"):
        batch_pairs(str(tmp_path / "*.tif"), str(tmp_path / "out.zarr"))
    with pytest.raises(ValueError, match=r"so --probabilities .*p.tif.* put \{stem\}"):
        batch_pairs(str(tmp_path / "*.tif"), str(tmp_path / "{stem}.zarr"), str(tmp_path / "p.tif"))
    with pytest.raises(ValueError, match=r"a.png and .*a.tif would both write .*a.zarr: use \{name\}"):
        batch_pairs(str(tmp_path / "a.*"), str(tmp_path / "{stem}.zarr"))
    with pytest.raises(ValueError, match=r"output .*a.tif is one of the inputs matched by .*write the outputs else"):
        batch_pairs(str(tmp_path / "[ab].tif"), str(tmp_path / "{name}"))


def test_a_batch_tunes_once_per_slice_shape_and_gives_the_labels_of_one_predict_each(volumes, tmp_path,
                                                                                    one_torch_thread):
    root, model = volumes["root"], volumes["model"]
    items = predict_many(model, batch_pairs(str(root / "*.zarr"), str(tmp_path / "{stem}.zarr")), route="auto",
                         progress=False)
    assert [i.status for i in items] == ["done"] * 3
    meta = {name: read_run_metadata(tmp_path / f"{name}.zarr") for name in "abc"}
    assert all(m["status"] == "complete" for m in meta.values())
    # a: tuned (every candidate timed); b (same slice shape): a's route forced, only checked against fp32;
    # c (another slice shape): tuned again
    assert meta["a"]["route"]["requested"] == "auto" and len(meta["a"]["route"]["candidates"]) > 2
    assert meta["b"]["route"]["requested"] == meta["a"]["route"]["name"]  # (run in fp32 if refused on b's probe)
    assert items[1].route == meta["b"]["route"]["name"]
    # the fp32 reference and the forced route (and its fp32 fallback, where b's probe refuses a bf16 route)
    assert len(meta["b"]["route"]["candidates"]) <= (3 if "refused" in meta["b"]["route"] else 2)
    assert meta["c"]["route"]["requested"] == "auto" and len(meta["c"]["route"]["candidates"]) > 2
    for item, name in zip(items, "abc"):  # the labels of one `emseg predict` with the route each ran
        alone = predict(model, root / f"{name}.zarr", tmp_path / "alone" / f"{name}.zarr", route=item.route,
                        progress=False)
        np.testing.assert_array_equal(_labels(item.output), _labels(alone))
        assert _labels(item.output).shape == volumes["crops"][name].shape


def test_a_rerun_skips_finished_outputs_resumes_an_unfinished_one_and_a_bad_volume_stops_nothing(
        volumes, tmp_path, one_torch_thread):
    root, model = volumes["root"], volumes["model"]
    tifs = root / "tif"
    bad = tmp_path / "in" / "bad.tif"
    bad.parent.mkdir()
    bad.write_text("not an image")
    for name in "abc":
        (tmp_path / "in" / f"{name}.tif").symlink_to(tifs / f"{name}.tif")
    # b was interrupted after its first block (default route, blocks of one slice)
    predict_blockwise(model, tmp_path / "in" / "b.tif", tmp_path / "out" / "b.zarr", block=(1, 96, 128),
                      max_blocks=1, progress=False)
    assert read_run_metadata(tmp_path / "out" / "b.zarr")["status"] == "running"
    pattern, template = str(tmp_path / "in" / "*.tif"), str(tmp_path / "out" / "{stem}.zarr")
    items = predict_many(model, batch_pairs(pattern, template), block=(1, 96, 128), progress=False)
    assert [(i.input.rsplit("/", 1)[1], i.status) for i in items] == [
        ("a.tif", "done"), ("b.tif", "done"), ("bad.tif", "failed"), ("c.tif", "done")]
    assert "bad.tif" in items[2].error and "cannot read" in items[2].error
    assert not (tmp_path / "out" / "bad.zarr").exists()  # nothing half-written pretends to be a result
    b = read_run_metadata(tmp_path / "out" / "b.zarr")
    assert b["status"] == "complete" and b["route"]["requested"] is None  # resumed with its own route
    whole = predict(model, tifs / "b.tif", tmp_path / "b_whole.zarr", block=(1, 96, 128), progress=False)
    np.testing.assert_array_equal(_labels(tmp_path / "out" / "b.zarr"), _labels(whole))
    stamps = {n: (tmp_path / "out" / f"{n}.zarr" / "zarr.json").stat().st_mtime_ns for n in "abc"}
    bad.unlink()
    again = predict_many(model, batch_pairs(pattern, template), block=(1, 96, 128), progress=False)
    assert [i.status for i in again] == ["skipped"] * 3
    assert stamps == {n: (tmp_path / "out" / f"{n}.zarr" / "zarr.json").stat().st_mtime_ns for n in "abc"}
    with pytest.raises(FileNotFoundError):  # --stop-on-error: the first failure is raised as it is
        predict_many(model, [BatchItem(str(tmp_path / "gone.tif"), str(tmp_path / "gone.zarr")),
                             BatchItem(str(tifs / "a.tif"), str(tmp_path / "a_after.zarr"))], keep_going=False,
                     progress=False)
    assert not (tmp_path / "a_after.zarr").exists()


def test_the_cli_segments_a_pattern_lists_each_volume_and_exits_1_on_a_failure(volumes, tmp_path):
    tifs, model = volumes["root"] / "tif", volumes["model"]
    (tmp_path / "in").mkdir()
    for name in "ab":
        (tmp_path / "in" / f"{name}.tif").symlink_to(tifs / f"{name}.tif")
    (tmp_path / "in" / "empty.tif").write_bytes(b"")
    runner = CliRunner()
    args = ["predict", str(model), str(tmp_path / "in" / "*.tif"), str(tmp_path / "out" / "{stem}.tif"), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "3 volumes: 2 segmented, 0 finished before, 1 failed" in result.output
    assert "empty.tif" in result.output and "rerun the same command" in result.output
    for name in "ab":
        labels = tifffile.imread(tmp_path / "out" / f"{name}.tif")
        assert labels.shape == volumes["crops"][name].shape and labels.dtype == np.uint8
    (tmp_path / "in" / "empty.tif").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 volumes: 0 segmented, 2 finished before, 0 failed" in result.output
    result = runner.invoke(app, ["predict", str(model), str(tmp_path / "in" / "*.tif"), str(tmp_path / "one.tif")])
    assert result.exit_code == 2 and "put {stem} in it" in result.output


def test_an_interrupted_batch_says_what_is_finished_and_how_to_go_on(volumes, tmp_path, monkeypatch):
    from emseg.inference import _batch

    tifs, model = volumes["root"] / "tif", volumes["model"]
    real = _batch.predict_with_route

    def interrupted_on_b(model, image, output, **options):
        if str(image).endswith("b.tif"):
            raise KeyboardInterrupt
        return real(model, image, output, **options)

    monkeypatch.setattr(_batch, "predict_with_route", interrupted_on_b)
    args = ["predict", str(model), str(tifs / "*.tif"), str(tmp_path / "{stem}.tif"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    assert "3 volumes: 1 segmented, 0 finished before, 0 failed, 2 not finished" in result.output
    assert "interrupted: rerun the same command to go on" in result.output
    assert (tmp_path / "a.tif").exists() and not (tmp_path / "b.tif").exists()
    monkeypatch.undo()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "3 volumes: 2 segmented, 1 finished before, 0 failed" in result.output
