#!/bin/bash
# What `emseg predict` costs before its first block: one forced route on a tiny zarr volume, so the run is
# start-up (imports, model loads, the receptive-field probe, the route's agreement check) and little else.
# Compare two source trees with benchmarks/paired_wall.py (docs/BENCHMARKS.md):
#   python benchmarks/paired_wall.py -n 5 --a 'benchmarks/predict_startup.sh src MODEL VOL' \
#       --b 'benchmarks/predict_startup.sh OLD/src MODEL VOL'
# VOL: e.g. a 2 x 128 x 128 uint8 zarr; ROUTE (4th argument) defaults to fp32-eager-cl-t2-w128x128-b1.
set -e
src=$1 model=$2 volume=$3 route=${4:-fp32-eager-cl-t2-w128x128-b1}
out=$(mktemp -d)/labels.zarr
trap 'rm -rf "$(dirname "$out")"' EXIT
PYTHONPATH=$src "$(dirname "$0")/../.venv/bin/python" -c "from emseg.cli import main; main()" \
    predict "$model" "$volume" "$out" --quiet --workers 0 --route "$route"
