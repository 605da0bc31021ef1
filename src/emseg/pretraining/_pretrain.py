"""The pretraining loop: unlabelled patches in, a pretrained network out (``emseg pretrain``).

Output folder::

    pretrained.pt   network spec + weights + normaliser + what data it saw (start for model.init)
    last.pt         the same plus optimiser, pretext heads, queue and random states (--resume)
    metrics.jsonl   one line per epoch: the pretext loss
    config.yaml     the configuration
    summary.json    written last: epochs, loss, stop reason
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emseg._device import autocast
from emseg._progress import progress_bar
from emseg._version import __version__
from emseg.data import Normalizer, UnlabelledVolumes
from emseg.io import atomic_output
from emseg.models import (
    MODELS,
    PRETRAINED_FILENAME,
    CheckpointError,
    build_model,
    class_dependent_keys,
    initialise_network,
    load_init_checkpoint,
    model_divisor,
    save_pretrained_checkpoint,
)
from emseg.pretraining._config import PretrainConfig, load_pretrain_config
from emseg.pretraining._mim import mask_blocks, masked_input, mim_loss, mim_target
from emseg.pretraining._moco import MoCo, em_augment
from emseg.training import prepare_run_dir, start_run  # the run folder and seeds as `emseg train` sets them

logger = logging.getLogger(__name__)

__all__ = ["PretrainResult", "pretrain"]

LAST = "last.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
SUMMARY = "summary.json"
_RESUME_KEYS = ("optimizer", "rng", "pretext")


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    out_dir: Path
    checkpoint: Path
    epochs: int
    iterations: int
    final_loss: float
    elapsed_s: float
    stop_reason: str


def _patch_size(config: PretrainConfig) -> tuple[int, ...]:
    spec = MODELS.get(config.model.name)
    if config.pretraining.patch_size is not None:
        return tuple(config.pretraining.patch_size)
    if spec.spatial_dims == 3:
        return tuple(spec.default_patch or (8, 128, 128))
    return (128, 128)


def _resume_state(config: PretrainConfig, out_dir: Path) -> dict[str, Any] | None:
    last = out_dir / LAST
    if not last.is_file():
        logger.warning("--resume: %s has no %s (no epoch finished): starting from scratch", out_dir, LAST)
        return None
    try:
        state = load_init_checkpoint(last)
    except CheckpointError as err:
        raise ValueError(f"cannot resume: {err}. Pass --overwrite instead of --resume to start again") from None
    recorded = state.get("pretraining", {}).get("config", {})
    now = config.model_dump(mode="json")
    keys = [("model", now["model"], {k: v for k, v in (recorded.get("model") or {}).items()}),
            ("pretraining.method", now["pretraining"]["method"], (recorded.get("pretraining") or {}).get("method")),
            ("pretraining.patch_size", now["pretraining"]["patch_size"],
             (recorded.get("pretraining") or {}).get("patch_size"))]
    diffs = [f"{k}: {old!r} in the run, {new!r} now" for k, new, old in keys if new != old]
    if diffs:
        raise ValueError(f"cannot resume {out_dir}: the configuration describes another pretraining than the "
                         f"run's ({'; '.join(diffs)}). Nothing was changed. Resume with {out_dir / CONFIG}, or "
                         f"pretrain into a new --out")
    return state


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _learning_rate(base: float, fraction: float, warmup: float) -> float:
    if warmup > 0 and fraction < warmup:
        return base * max(fraction / warmup, 0.01)
    progress = (fraction - warmup) / max(1e-9, 1.0 - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _trained_keys(network: torch.nn.Module) -> set[str]:
    """State names a step of the pretext task trains: parameters with a gradient and their modules' buffers."""
    params = {n for n, p in network.named_parameters() if p.grad is not None}
    modules = {n.rsplit(".", 1)[0] for n in params}
    return {k for k in network.state_dict() if k in params or k.rsplit(".", 1)[0] in modules}


def pretrain(config: PretrainConfig | str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False,
             resume: bool = False, progress: bool = True) -> PretrainResult:
    """Self-supervised pretraining of the network a configuration describes, on unlabelled data.

    Args:
        config: a :class:`PretrainConfig` or the path of its YAML file.
        out_dir: output folder (see the module docstring); its ``pretrained.pt`` (or the folder itself)
            is a start for ``model.init`` / ``emseg train --init``.
        overwrite: start again in a non-empty folder.
        resume: continue from ``last.pt``.
        progress: show a progress bar (on a terminal).

    Raises:
        KeyboardInterrupt: Ctrl-C; ``last.pt`` of the last finished epoch is kept (``resume=True`` continues).
    """
    if not isinstance(config, PretrainConfig):
        config = load_pretrain_config(config)
    out_dir = Path(out_dir)
    spec = MODELS.get(config.model.name)
    patch = _patch_size(config)
    sources = [(s.image, s.slices) for s in config.data.unlabelled]
    data = UnlabelledVolumes(sources, patch_size=patch, context=config.model.context_slices, key="data.unlabelled")
    try:
        state = _resume_state(config, out_dir) if resume else None
        if resume and state is None:
            resume, overwrite = False, True
        prepare_run_dir(out_dir, overwrite=overwrite, resume=resume, what="output folder",
                        files=(PRETRAINED_FILENAME, LAST, METRICS, SUMMARY))
        with atomic_output(out_dir / CONFIG) as tmp:
            tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        return _run(config, out_dir, data, spec=spec, patch=patch, state=state, progress=progress)
    finally:
        data.close()


def _run(config: PretrainConfig, out_dir: Path, data: UnlabelledVolumes, *, spec: Any, patch: tuple[int, ...],
         state: dict[str, Any] | None, progress: bool) -> PretrainResult:
    pc = config.pretraining
    rng, device, dtype = start_run(seed=pc.seed, num_threads=pc.num_threads, precision=pc.precision)
    in_channels = config.model.context_slices
    options = config.model.options
    normalizer = (Normalizer.from_dict(state["normalization"]) if state is not None
                  else data.fit_normalizer(np.random.default_rng([pc.seed, 1])))
    network = build_model(config.model.name, in_channels=in_channels, num_classes=1, options=options).to(device)
    divisor = model_divisor(network)
    if not spec.valid_padding and any(p % divisor for p in patch[-2:]):
        raise ValueError(f"pretraining.patch_size {list(patch)} must be a multiple of {divisor} in y and x for "
                         f"model {config.model.name!r}; e.g. {[*patch[:-2], *(p - p % divisor for p in patch[-2:])]}")
    if config.model.init and state is None:
        logger.info(initialise_network(network, config.model.init, name=config.model.name, options=options,
                                       in_channels=in_channels, num_classes=1).describe())
    moco = None
    if pc.method == "moco":
        example = torch.zeros((1, in_channels, *patch), device=device)
        moco = MoCo(network, example=example, dim=pc.moco_dim, queue=pc.moco_queue, momentum=pc.moco_momentum,
                    temperature=pc.temperature).to(device)
        params = [*network.parameters(), *moco.project.parameters()]
        exclude: list[str] | None = None  # what the pretext task does not train: known after the first step
    else:
        params = list(network.parameters())
        exclude = sorted(class_dependent_keys(config.model.name, options=options, in_channels=in_channels,
                                              num_classes=1))  # the temporary intensity head
    optimizer = torch.optim.AdamW(params, lr=pc.learning_rate, weight_decay=pc.weight_decay)
    epoch, iteration, elapsed_before, records = 0, 0, 0.0, []
    if state is not None:
        network.load_state_dict(state["state"])
        optimizer.load_state_dict(state["optimizer"])
        if moco is not None:
            moco.load_state_dict(state["pretext"]["moco"])
        exclude = state["exclude"] if (moco is None or state["exclude"]) else None
        info = state["pretraining"]
        epoch, iteration, elapsed_before = info["epoch"], info["iteration"], info["elapsed_s"]
        rng.bit_generator.state = json.loads(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        metrics = out_dir / METRICS
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        records = [json.loads(line) for line in lines if line.strip()][:epoch]
        _write_metrics(metrics, records)
        logger.info("resuming %s at epoch %d", out_dir, epoch)
    budget, total = pc.max_minutes * 60.0, pc.epochs * pc.iterations_per_epoch
    start = time.perf_counter() - elapsed_before
    stop_reason = "epochs"
    block = (min(pc.mask_block_z, patch[0]), pc.mask_block, pc.mask_block) if len(patch) == 3 else (pc.mask_block,) * 2

    def fraction() -> float:
        return 0.0 if iteration == 0 else min(1.0, max((time.perf_counter() - start) / budget, iteration / total))

    logger.info("pretraining %s by %s on %d unlabelled %s of %d source(s); patch %s; normaliser mean %.2f std %.2f",
                config.model.name, pc.method, data.num_slices, "positions" if len(patch) == 3 else "slices",
                len(data.paths), list(patch), normalizer.mean, normalizer.std)
    with progress_bar(f"Pretraining ({pc.method})", total=100, unit="%", enabled=progress) as advance:
        while epoch < pc.epochs:
            network.train()
            losses: list[float] = []
            epoch_start = time.perf_counter()
            for _ in range(pc.iterations_per_epoch):
                if time.perf_counter() - start >= budget:
                    stop_reason = "time limit"
                    break
                lr = _learning_rate(pc.learning_rate, fraction(), pc.warmup_fraction)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = torch.from_numpy(normalizer(data.sample(pc.batch_size, rng))).to(device)
                if moco is None:
                    mask = np.stack([mask_blocks(x.shape[2:], block=block, ratio=pc.mask_ratio, rng=rng)
                                     for _ in range(x.shape[0])])
                    mask_t = torch.from_numpy(mask).to(device)
                    with autocast(device, dtype):
                        out = network(masked_input(x, mask_t))
                    out = out["main"] if isinstance(out, dict) else out
                    loss = mim_loss(out, mim_target(x), mask_t)
                else:
                    scale = tuple(pc.crop_scale)
                    view_q, view_k = em_augment(x, rng, crop_scale=scale), em_augment(x, rng, crop_scale=scale)
                    with autocast(device, dtype):
                        loss = moco(view_q, view_k)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if exclude is None:
                    exclude = sorted(set(network.state_dict()) - _trained_keys(network))
                optimizer.step()
                losses.append(float(loss.item()))
                iteration += 1
                advance(completed=100 * fraction(), status=f"epoch {epoch + 1} loss {np.mean(losses):.4f}")
            if not losses:
                break
            epoch += 1
            record = {"epoch": epoch, "iteration": iteration, "elapsed_s": round(time.perf_counter() - start, 2),
                      "lr": optimizer.param_groups[0]["lr"], "loss": float(np.mean(losses)), "method": pc.method,
                      "epoch_s": round(time.perf_counter() - epoch_start, 2)}
            records.append(record)
            info = {"epoch": epoch, "iteration": iteration, "elapsed_s": time.perf_counter() - start,
                    "patches_seen": iteration * pc.batch_size, "loss": record["loss"],
                    "config": config.model_dump(mode="json")}
            ckpt = {"emseg_version": __version__, "method": pc.method,
                    "model": {"name": config.model.name, "options": options, "in_channels": in_channels,
                              "context_slices": config.model.context_slices, "spatial_dims": spec.spatial_dims},
                    "state": {k: v.detach().cpu() for k, v in network.state_dict().items()},
                    "exclude": list(exclude or []), "normalization": normalizer.to_dict(),
                    "data": {"unlabelled": data.describe(), "patch_size": list(patch)}, "pretraining": info}
            resumable = {"optimizer": optimizer.state_dict(),
                         "rng": {"numpy": json.dumps(rng.bit_generator.state), "torch": torch.get_rng_state()},
                         "pretext": {"moco": moco.state_dict()} if moco is not None else {}}
            # last.pt first (the record of the run), then the metrics line, then pretrained.pt
            save_pretrained_checkpoint(out_dir / LAST, {**ckpt, **resumable})
            _write_metrics(out_dir / METRICS, records)
            save_pretrained_checkpoint(out_dir / PRETRAINED_FILENAME, ckpt)
            logger.info("epoch %d: %s loss %.4f", epoch, pc.method, record["loss"])
            if stop_reason == "time limit":
                break
    if epoch == 0:
        raise RuntimeError(f"pretraining stopped before the first epoch finished (max_minutes={pc.max_minutes}); "
                           f"raise pretraining.max_minutes or lower pretraining.iterations_per_epoch")
    elapsed = time.perf_counter() - start
    final = records[-1]["loss"]
    summary = {"checkpoint": str(out_dir / PRETRAINED_FILENAME), "method": pc.method, "epochs": epoch,
               "iterations": iteration, "final_loss": final, "elapsed_s": round(elapsed, 1), "stop_reason": stop_reason}
    with atomic_output(out_dir / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return PretrainResult(out_dir, out_dir / PRETRAINED_FILENAME, epoch, iteration, final, elapsed, stop_reason)
