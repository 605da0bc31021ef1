"""The plain reference network of the side-by-side benchmarks (lucchi.py, side_by_side.py).

MONAI ``BasicUNet`` (features 32, 32, 64, 128, 256, 32), Dice + CE, Adam 1e-3,
batches of random 2-D patches with flips, fp32, a plain loop for a fixed number
of minutes (no validation, last weights), wrapped in an emseg ``Predictor`` so
that the same blockwise engine predicts it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from emseg.data import Normalizer
from emseg.inference import Predictor


def train_basicunet(raw: np.ndarray, labels: np.ndarray, *, classes: list[str], minutes: float, threads: int,
                    seed: int = 0, patch: int = 256, batch: int = 8,
                    stop_file: Path | None = None) -> tuple[Predictor, dict]:
    """Train on the slices of ``raw`` ``(Z, Y, X)`` / ``labels`` for ``minutes``; return the predictor and its log.

    With ``stop_file``, training also ends at the first step after that file exists (``side_by_side_lucchi.py``:
    the other arm finished training, so both had the same wall-clock time), ``minutes`` being the cap."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    lab = labels.astype(np.int64)
    normalizer = Normalizer.fit([raw[k] for k in range(0, len(raw), max(1, len(raw) // 15))])
    x_all = normalizer(raw).astype(np.float32)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=len(classes), features=(32, 32, 64, 128, 256, 32))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start, steps, losses = time.perf_counter(), 0, []
    net.train()
    while time.perf_counter() - start < minutes * 60 and not (stop_file is not None and stop_file.exists()):
        zs = rng.integers(0, len(raw), batch)
        ys, xs = rng.integers(0, raw.shape[1] - patch + 1, batch), rng.integers(0, raw.shape[2] - patch + 1, batch)
        xb = np.stack([x_all[z, y:y + patch, x:x + patch] for z, y, x in zip(zs, ys, xs)])[:, None]
        yb = np.stack([lab[z, y:y + patch, x:x + patch] for z, y, x in zip(zs, ys, xs)])[:, None]
        for axis in (2, 3):
            if rng.random() < 0.5:
                xb, yb = np.flip(xb, axis), np.flip(yb, axis)
        out = net(torch.from_numpy(xb.copy()))
        loss = loss_fn(out, torch.from_numpy(yb.copy()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        steps += 1
    net.eval()
    predictor = Predictor(net, classes=classes, normalizer=normalizer, precision="fp32", divisor=16)
    return predictor, {"steps": steps, "train_s": round(time.perf_counter() - start, 1),
                       "final_loss": float(np.mean(losses[-20:])) if losses else None}


def predict_labels(model, image, out, *, threads: int, tta: bool = False) -> tuple[np.ndarray, float]:
    """Predict ``image`` (a path) with the blockwise engine into the zarr ``out``; return the labels and seconds."""
    import zarr

    from emseg.inference import predict_blockwise

    t0 = time.perf_counter()
    predict_blockwise(model, image, out, threads=threads, tta=tta, overwrite=True, progress=False)
    node = zarr.open(str(out), mode="r")
    labels = np.asarray(node if isinstance(node, zarr.Array) else node["labels"])
    return labels, time.perf_counter() - t0
