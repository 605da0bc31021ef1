"""The plain reference network of the side-by-side benchmarks (issue 22): MONAI BasicUNet, Dice + CE, Adam 1e-3.

Shared by ``benchmarks/lucchi.py`` and ``benchmarks/side_by_side.py`` (scripts in this folder import it as
``from _baseline import train_basicunet``: a script's own folder is first on ``sys.path``).
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
    """A plain loop: MONAI BasicUNet (features 32, 32, 64, 128, 256, 32), Dice + CE, Adam 1e-3, fp32, random
    ``patch`` x ``patch`` crops of the 2-D slices of ``raw`` with random flips, no validation, last weights.

    Trains for ``minutes`` of wall-clock time, or, with ``stop_file``, until that file exists (the other arm of
    a side-by-side run has finished training: both arms then had the same wall-clock time on the same
    machine), ``minutes`` being the cap. Returns a predictor (same tiling as emseg's) and the run's facts."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    n, height, width = raw.shape
    if height < patch or width < patch:
        raise ValueError(f"slices of {height} x {width} are smaller than the patch {patch}")
    normalizer = Normalizer.fit([raw[k] for k in range(0, n, max(1, n // 15))])
    x_all = normalizer(raw).astype(np.float32)
    lab = labels.astype(np.int64)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=len(classes), features=(32, 32, 64, 128, 256, 32))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    start, steps, losses = time.perf_counter(), 0, []
    net.train()

    def go_on() -> bool:
        if stop_file is not None and stop_file.exists():
            return False
        return time.perf_counter() - start < minutes * 60

    while go_on():
        zs = rng.integers(0, n, batch)
        ys, xs = rng.integers(0, height - patch + 1, batch), rng.integers(0, width - patch + 1, batch)
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
    predictor = Predictor(net, classes=list(classes), normalizer=normalizer, precision="fp32", divisor=16)
    return predictor, {"steps": steps, "train_s": round(time.perf_counter() - start, 1),
                       "final_loss": float(np.mean(losses[-20:])) if losses else None}
