"""The blockwise engine's own ceiling: read -> (no network) -> write, with 1, 2, 4 reader/writer threads.

A GPU network outruns the host: on an H200 ``unet2d`` labels 442 MVox/s, and one thread compressing the
labels with zarr's default zstd writes about 290 MVox/s on one AVX2 core.  This benchmark replaces the
network by a copy of real labels (the EPFL training labels, mirror-tiled like the raw volume, so they
compress as real labels do) and runs ``predict_blockwise`` on a chunked zarr volume, so the rate it reports
is what the engine's reads, writes and markers allow at each ``io_threads``: the most a GPU route can reach
end to end on that host (its start-up aside).  First, one thread reading the volume's chunks and one writing
labels chunks are timed on their own (``one_thread_codec``).

    PYTHONPATH=src python benchmarks/engine_io.py --raw ../shared/data/epfl-multiclass/train_raw.tif \\
        --labels ../shared/data/epfl-multiclass/train_labels.tif --gvox 0.25 --repeats 3 --out engine_io.json

Runs are interleaved (1, 2, 4, 1, 2, 4, ...); the JSON has every run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import build_volume  # noqa: E402


class CopiedLabels:
    """A blockwise predictor whose labels are read from an array in memory (no network at all)."""

    def __init__(self, labels: np.ndarray, classes: int):
        self.labels, self.classes = labels, [str(i) for i in range(classes)]

    def block_input(self, region, shape):
        return region

    def predict_labels_block(self, data, *, origin, region, shape):
        return self.labels[region]

    def predict_proba_block(self, data, *, origin, region, shape):  # the interface's other half (unused)
        raise NotImplementedError


def one_thread_codec(volume: Path, labels: np.ndarray, work: Path) -> dict[str, float]:
    """MVox/s of one thread reading (decompressing) the volume's 8-slice chunks, and writing (compressing)
    the labels in chunks of the same shape with the labels stores' codec, on their own."""
    import zarr

    from emseg.io import write_image

    source = zarr.open_array(str(volume), mode="r")
    depth = min(160, source.shape[0] - source.shape[0] % 8)
    start = time.perf_counter()
    for z in range(0, depth, 8):
        np.asarray(source[z:z + 8])
    read = depth * source.shape[1] * source.shape[2] / (time.perf_counter() - start) / 1e6
    write_image(work / "codec.zarr", np.zeros((depth, *labels.shape[1:]), np.uint8), chunks=(8, *labels.shape[1:]),
                overwrite=True)
    target = zarr.open_array(str(work / "codec.zarr"), mode="r+")
    start = time.perf_counter()
    for z in range(0, depth, 8):
        target[z:z + 8] = labels[z:z + 8]
    written = depth * labels.shape[1] * labels.shape[2] / (time.perf_counter() - start) / 1e6
    return {"read_mvox_s": read, "write_mvox_s": written, "slices": depth}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return ",".join(sorted({f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--gvox", type=float, default=0.25)
    ap.add_argument("--threads", default="1,2,4", help="io_threads values to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import tifffile

    from emseg.inference import predict_blockwise

    work = args.work or Path(tempfile.mkdtemp(prefix="emseg-io-"))
    raw = tifffile.imread(args.raw)
    shape = build_volume(work / "volume.zarr", args.gvox, chunk_z=8, raw=raw)
    labels = tifffile.imread(args.labels).astype(np.uint8)
    reps = -(-shape[0] // labels.shape[0])
    labels = np.concatenate([labels, labels[::-1]] * reps)[:shape[0]]
    predictor = CopiedLabels(np.ascontiguousarray(labels), int(labels.max()) + 1)
    nvox = int(np.prod(shape))
    codec = one_thread_codec(work / "volume.zarr", predictor.labels, work)
    print(f"one thread alone: read {codec['read_mvox_s']:.0f} MVox/s, write {codec['write_mvox_s']:.0f} MVox/s",
          flush=True)
    counts = [int(t) for t in args.threads.split(",")]
    runs = []
    for rep in range(args.repeats):
        for io in counts:
            out = work / f"labels_{io}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            predict_blockwise(predictor, work / "volume.zarr", out, block=(8, *shape[1:]), io_threads=io,
                              progress=False)
            wall = time.perf_counter() - start
            runs.append({"io_threads": io, "repeat": rep, "wall_s": wall, "mvox_s": nvox / wall / 1e6})
            print(f"io_threads {io}: {nvox / wall / 1e6:.0f} MVox/s ({wall:.2f} s)", flush=True)
    medians = {io: statistics.median(r["mvox_s"] for r in runs if r["io_threads"] == io) for io in counts}
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "flags": cpu_flags(),
                          "cores": os.cpu_count(), "load_average": os.getloadavg()},
              "volume": {"shape": list(shape), "gvox": nvox / 1e9, "chunks": [8, *shape[1:]]},
              "one_thread_codec": codec, "runs": runs, "median_mvox_s": medians}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
