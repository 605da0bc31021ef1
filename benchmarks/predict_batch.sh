#!/bin/bash
# Many volumes: one `emseg predict` per volume (MODE=each) against one `emseg predict` over a pattern (MODE=one),
# the same route request in both (ROUTE, default auto: tuned per process, or once per slice shape in a batch).
# Compare the two with benchmarks/paired_wall.py (docs/BENCHMARKS.md):
#   python benchmarks/paired_wall.py -n 3 --a 'benchmarks/predict_batch.sh one MODEL DIR' \
#       --b 'benchmarks/predict_batch.sh each MODEL DIR'
# DIR: a folder of volumes (*.tif); the labels go to a temporary folder, removed at exit.
set -e
mode=$1 model=$2 dir=$3 route=${4:-auto}
python="$(dirname "$0")/../.venv/bin/python"
src="$(cd "$(dirname "$0")/.." && pwd)/src"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
emseg() { PYTHONPATH=$src "$python" -c "from emseg.cli import main; main()" "$@"; }
if [ "$mode" = one ]; then
    emseg predict "$model" "$dir/*.tif" "$out/{stem}.zarr" --quiet --route "$route"
else
    for f in "$dir"/*.tif; do
        name=$(basename "$f" .tif)
        emseg predict "$model" "$f" "$out/$name.zarr" --quiet --route "$route"
    done
fi
