"""TTA on the whole Lucchi++ test volume with the 60-minute default model, then the post-processing rows.

Reads the run of ``side_by_side_lucchi.py --dataset lucchi --minutes 60 --out /work/data/i22-60`` (its
default model), predicts the whole test volume with test-time augmentation (4 flips, one thread) and scores
it as that script does, raw and post-processed; writes ``/work/data/i22-60/tta_whole.json``
(benchmarks/results/side_by_side_lucchi_60min_tta.json)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/lucchi_tta_whole.py
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
torch.set_num_threads(1)
import tifffile
import side_by_side_lucchi as s
from emseg.inference import load_predictor, postprocess_labels
s.TEST_SLICES[0] = "all"
work = "/work/data/i22-60/lucchi-60min-seed0"
pred = load_predictor(f"{work}/default/model.pt", tta=True)
image = tifffile.imread("/work/data/lucchipp/lucchipp_test_raw.tif")
truth = tifffile.imread("/work/data/lucchipp/lucchipp_test_mito.tif")
t0 = time.perf_counter()
labels, _ = pred.predict_volume(image)
out = {"tta_predict_s": round(time.perf_counter() - t0, 1), "load": os.getloadavg(),
       "TTA (4 flips), whole test volume": s.score_labels("lucchi", labels, truth, ["background", "mitochondrion"])}
for name, kw in (("TTA + post median 3, min-size 1000, per slice", {"median": 3, "min_size": 1000, "per_slice": True}),
                 ("TTA + post median 5, min-size 1000, 3-D", {"median": 5, "min_size": 1000, "per_slice": False})):
    out[name] = s.score_labels("lucchi", postprocess_labels(labels, **kw), truth, ["background", "mitochondrion"])
out["load_after"] = os.getloadavg()
json.dump(out, open("/work/data/i22-60/tta_whole.json", "w"), indent=2)
print(json.dumps(out, indent=1))
