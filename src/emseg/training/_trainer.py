"""``emseg.train``: checks, the run directory, then the loop with its callbacks (or the forest's one fit).

The loop (:mod:`emseg.training._loop`) only steps; what a run does besides is attached to it as callbacks,
in this order: time budget, weight averaging, semi-supervised term, validation (best epoch), metrics log,
checkpoints, early stopping and abandon rule, progress bar, then the user's callbacks; calibration once
the run has ended.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emseg.config import Config, load_config
from emseg.data import LabelledSlices, LabelledVolumes, BatchStream, Normalizer, augment_batch, augment_volume_batch
from emseg.inference import Predictor
from emseg.losses import multi_head
from emseg.models import MODEL_FILENAME, MODELS, build_model, count_parameters, load_checkpoint, model_divisor
from emseg.models import check_initialisation, initialise_network
from emseg.training._budget import adapt_to_budget
from emseg.training._calibrate import CalibrateAtEnd
from emseg.training._callbacks import EarlyStopping, ProgressBar, SemiSupervisedTerm, TimeBudget, Validation
from emseg.training._callbacks import WeightAveraging, early_stop
from emseg.training._checkpointing import CheckpointSaver, MetricsLog, checkpoint_dict, loop_state, restore_random_states
from emseg.training._checkpointing import resume_state as _resume_state
from emseg.training._ema import WeightAverage
from emseg.training._forest import train_forest
from emseg.training._loop import Callback, TrainingLoop
from emseg.training._optim import build_optimizer
from emseg.training._result import TrainingInterrupted, TrainResult, cancelled, finish
from emseg.training._route import choose_route
from emseg.training._run_dir import CONFIG_FILENAME, LAST_FILENAME, METRICS_FILENAME, RUN_FILES, SUMMARY_FILENAME
from emseg.training._run_dir import prepare_run_dir, replace_text, restore_best, truncate_metrics
from emseg.training._schedules import learning_rate, plateau_scale
from emseg.training._semi import SemiSupervised
from emseg.training._setup import build_sampler, class_weights_from_frequencies, start_run, training_criterion
from emseg.training._spatial import fit_patch_to_data, inference_metadata, load_data, match_target, resolve_patch_size
from emseg.training._spatial import warn_absent_classes
from emseg.training._validation import METRIC_MODES, validation_subset

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "TrainingInterrupted", "train", "class_weights_from_frequencies"]

_early_stop = early_stop  # the rule's old name (tests/training/test_trainer_recipes.py)


def train(
    config: Config | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train the model a configuration describes and keep the best checkpoint.

    Args:
        config: a :class:`~emseg.config.Config` or the path of a YAML file.
        out_dir: run directory; receives ``model.pt`` (best by
            ``training.checkpoint_metric``, default validation mean IoU),
            ``last.pt`` (for ``resume``), ``metrics.jsonl`` (one line per
            epoch), ``config.yaml``, ``summary.json`` and, with
            ``training.weight_map``, the cached ``weight_maps.npz``.
        overwrite: start again in a non-empty run directory.
        resume: continue from ``last.pt`` in ``out_dir``.
        progress: show a progress bar (only on a terminal).
        callbacks: :class:`~emseg.training.Callback` objects attached to the loop after the built-in ones
            (a neural network's run; the random forest is fitted in one call and does not consult them).
            :class:`~emseg.training.StopOnEvent` / :class:`~emseg.training.StopWhen` cancel the run
            from outside at the next step: ``stop_reason == "cancelled"``, no ``summary.json``,
            ``model.pt`` (best finished epoch) and ``last.pt`` kept, so ``resume=True`` continues it.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingInterrupted: ``Ctrl-C`` after the first epoch: ``model.pt`` (the
            best epoch so far) and ``last.pt`` are kept; ``resume=True`` continues.
        RunWriteError: a file of the run could not be written (full disk); the
            message names it.
    """
    callbacks = list(callbacks)
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise ValueError(f"callbacks: {callback!r} is not an emseg.training.Callback; subclass it (or use "
                             f"emseg.training.StopOnEvent / StopWhen)")
    if not isinstance(config, Config):
        config = load_config(config)
    out_dir = Path(out_dir)
    # every check before anything is written: data (3-D: sub-stacks), patch size, the run to resume
    train_data, val_data = load_data(config)
    spec = MODELS.get(config.model.name)
    user_set = set(config.training.model_fields_set)  # before the patch is fitted to the data
    if spec.backend != "random-forest":
        config = fit_patch_to_data(config, train_data)
    warn_absent_classes(config, train_data, val_data)
    resume_state = None
    if resume and spec.backend != "random-forest":
        resume_state = _resume_state(config, out_dir)
    if resume and resume_state is None:  # nothing to resume (or a forest, fitted in one go): start again
        resume, overwrite = False, True
    if config.model.init and resume_state is None:  # model.init of another architecture: refused before any write
        check_initialisation(config.model.init, name=config.model.name, options=config.model.options,
                             in_channels=config.model.context_slices + len(config.preprocess.grain_filter),
                             num_classes=len(config.data.classes))
    budget = None
    if spec.backend != "random-forest":  # batch / patch size for max_minutes on this machine (resume: as recorded)
        config, budget = adapt_to_budget(config, train_data, user_set=user_set,
                                         resumed=None if resume_state is None else resume_state.get("training", {}))
    prepare_run_dir(out_dir, overwrite=overwrite, resume=resume, restartable=True, temporaries=RUN_FILES,
                    files=(MODEL_FILENAME, LAST_FILENAME, METRICS_FILENAME, SUMMARY_FILENAME))
    replace_text(out_dir / CONFIG_FILENAME, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    if spec.backend == "random-forest":
        return train_forest(config, out_dir, train_data, val_data)
    return _train_torch(config, out_dir, train_data, val_data, resume_state=resume_state, progress=progress,
                        budget_choice=budget, callbacks=callbacks)


def _train_torch(config: Config, out_dir: Path, train_data: LabelledSlices, val_data: LabelledSlices, *,
                 resume_state: dict[str, Any] | None, progress: bool,
                 budget_choice: dict[str, Any] | None = None, callbacks: Sequence[Callback] = ()) -> TrainResult:
    tc = config.training
    rng, device, dtype = start_run(seed=tc.seed, num_threads=tc.num_threads, precision=tc.precision)
    num_classes = len(config.data.classes)
    grain = list(config.preprocess.grain_filter)
    in_channels = config.model.context_slices + len(grain)

    normalizer = Normalizer.fit(train_data.images)
    volumes = isinstance(train_data, LabelledVolumes)  # 3-D model: (z, y, x) patches of sub-stacks
    patch_size = resolve_patch_size(config)
    sampler, wmaps, val_wmaps = build_sampler(config, out_dir, train_data, val_data, normalizer=normalizer, rng=rng,
                                              patch_size=patch_size, progress=progress)
    base_criterion, weights = training_criterion(config, train_data, device)
    model = build_model(config.model.name, in_channels=in_channels, num_classes=num_classes,
                        options=config.model.options).to(device)
    if config.model.init and resume_state is None:  # model.init: matching weights of a checkpoint (last.pt wins on resume)
        logger.info(initialise_network(model, config.model.init, name=config.model.name, options=config.model.options,
                                       in_channels=in_channels, num_classes=num_classes).describe())
    # the fastest way to run a step here (precision, memory format, compile, threads): before the optimiser
    # is built, on the model in place; a resumed run keeps the route it recorded
    route_choice = choose_route(model, input_shape=(tc.batch_size, in_channels, *patch_size), device=device,
                                configured=tc.route, precision=tc.precision, num_threads=tc.num_threads,
                                budget_s=tc.max_minutes * 60.0,
                                recorded=(resume_state or {}).get("training", {}).get("route"))
    route, dtype = route_choice.route, route_choice.route.dtype(device)
    logger.info("%s", route_choice.describe())
    optimizer = build_optimizer(model, name=tc.optimizer, learning_rate=tc.learning_rate, weight_decay=tc.weight_decay,
                                weight_decay_groups=tc.weight_decay_groups, momentum=tc.momentum, nesterov=tc.nesterov)
    ema = WeightAverage(model, tc.ema_decay) if tc.ema_decay is not None else None
    semi = (SemiSupervised(config, model, normalizer=normalizer, patch_size=tuple(patch_size), device=device,
                           dtype=dtype, criterion=base_criterion)
            if tc.semi_supervised is not None else None)  # data.unlabelled (issue 18)
    scored = model if ema is None else ema.model  # the weights validated and saved
    predictor = Predictor(scored, classes=config.data.classes, normalizer=normalizer,
                          context_slices=config.model.context_slices, grain_filter=grain,
                          grain_cache=len(val_data) + 1, device=device, precision=tc.precision,
                          divisor=model_divisor(model), window_3d=inference_metadata(config).get("window_3d"))
    # auxiliary-head loss weights: the model's own (hybrid2d3d: c2d), overridden by training.aux_loss_weights
    aux_weights = {**(getattr(model, "aux_loss_weights", None) or {}), **(tc.aux_loss_weights or {})}
    metric, mode = tc.checkpoint_metric, METRIC_MODES[tc.checkpoint_metric]
    val = validation_subset(val_data, tc.val_max_slices)
    unit = "sub-stacks" if volumes else "slices"
    logger.info("model %s: %.2f M parameters; %d training %s, %d validation %s; precision %s; "
                "class weights %s", config.model.name, count_parameters(model) / 1e6, len(train_data), unit, len(val), unit,
                "fp32" if dtype is None else str(dtype).removeprefix("torch."),
                None if weights is None else [round(float(w), 2) for w in weights])

    state = None
    if resume_state is not None:  # checked by _resume_state before the run directory was touched
        rng = _resume(resume_state, out_dir, model=model, ema=ema, semi=semi, optimizer=optimizer, rng=rng,
                      sampler=sampler, device=device, seed=tc.seed)
        state = loop_state(resume_state["training"])

    # patches drawn and augmented by a background thread (training.prefetch), same batches as inline
    batches = BatchStream(sampler, augment=augment_volume_batch if volumes else augment_batch, config=tc.augment,
                          rng=rng, batch_size=tc.batch_size, iterations_per_epoch=tc.iterations_per_epoch,
                          patch_shape=tuple(patch_size), weights=bool(wmaps), prefetch=tc.prefetch)
    has_val = bool(len(val))
    run_info = {"route": route_choice.to_dict(), **({"budget": budget_choice} if budget_choice else {})}
    averaging = WeightAveraging(ema) if ema is not None else None
    semi_term = SemiSupervisedTerm(semi) if semi is not None else None
    validation = Validation(predictor, val, num_classes=num_classes, background=config.data.background,
                            loss=base_criterion, weight_maps=val_wmaps, seed=tc.seed, metric=metric, mode=mode,
                            keep_scores=tc.calibrate)
    divisor = model_divisor(model)
    saver = CheckpointSaver(
        out_dir, config=config, metric=metric, has_validation=has_val, run_info=run_info,
        resumables=[c for c in (averaging, semi_term) if c is not None],
        checkpoint=lambda training: checkpoint_dict(config, backend="torch", state=scored.state_dict(), normalizer=normalizer,
                                                    in_channels=in_channels, training=training, divisor=divisor))
    calibration = (CalibrateAtEnd(out_dir, val, validation=validation, predictor=predictor, num_classes=num_classes,
                                  background=config.data.background) if tc.calibrate and has_val else None)
    attached = [TimeBudget(tc.max_minutes * 60.0, calibrate=tc.calibrate), averaging, semi_term, validation,
                MetricsLog(out_dir / METRICS_FILENAME), saver, EarlyStopping(tc, has_validation=has_val),
                ProgressBar(enabled=progress), *callbacks, calibration]
    loop = TrainingLoop(
        model=model, optimizer=optimizer, batches=batches, prepare_input=route.prepare_input, match_target=match_target,
        # wrapped for multi-head models once the first output is seen
        criterion=lambda logits: multi_head(base_criterion, list(logits), aux_weights) if isinstance(logits, dict) else base_criterion,
        learning_rate=lambda fraction, step, plateau: learning_rate(
            tc.learning_rate, tc.lr_schedule, fraction=fraction, step=step, warmup_fraction=tc.warmup_fraction,
            decay_rate=tc.lr_decay_rate, decay_steps=tc.lr_decay_steps, plateau=plateau),
        plateau=lambda history: plateau_scale(history, factor=tc.plateau_factor, patience=tc.plateau_patience,
                                              mode=mode if has_val else "min"),
        epochs=tc.epochs, iterations_per_epoch=tc.iterations_per_epoch, budget_s=tc.max_minutes * 60.0, device=device,
        dtype=dtype, callbacks=[c for c in attached if c is not None], state=state, record_fields={"route": route.name})
    try:
        reason = loop.run()
    except KeyboardInterrupt:
        _interrupted(out_dir)
    finally:
        batches.close()
    done = loop.state
    best_iou = done.best_iou if has_val else float("nan")
    best_value = (done.best if mode == "max" else -done.best) if has_val else float("nan")
    if loop.cancelled:
        return cancelled(out_dir, best_epoch=done.best_epoch, best=best_iou, epochs=done.epoch, elapsed=loop.elapsed(),
                         metric=metric, best_metric=best_value)
    if done.best_epoch == 0:
        raise RuntimeError(
            f"training stopped before the first epoch finished (max_minutes={tc.max_minutes}); "
            f"raise training.max_minutes or lower training.iterations_per_epoch"
        )
    loop.end()
    return finish(out_dir, best_epoch=done.best_epoch, best=best_iou, epochs=done.epoch, elapsed=loop.elapsed(),
                  reason=reason, metric=metric, best_metric=best_value,
                  calibration=None if calibration is None else calibration.info, run_info=run_info)


def _resume(resume_state: dict[str, Any], out_dir: Path, *, model: torch.nn.Module, ema: WeightAverage | None,
            semi: SemiSupervised | None, optimizer: torch.optim.Optimizer, rng: np.random.Generator, sampler: Any,
            device: torch.device, seed: int) -> np.random.Generator:
    """Put ``last.pt`` back into the network, the averages, the optimiser and the random states; returns the
    generator the batches draw from."""
    state = resume_state
    try:
        model.load_state_dict(state["train_state"] if ema is not None else state["state"])
    except RuntimeError as err:  # a config.yaml edited by hand: torch lists every tensor; say it shortly
        raise ValueError(f"cannot resume {out_dir / LAST_FILENAME}: its weights do not fit the configured "
                         f"network ({str(err).splitlines()[0]} ...); resume with the run's configuration "
                         f"{out_dir / CONFIG_FILENAME} or train into a new --out") from None
    if ema is not None:
        ema.load(state["state"], state["ema"])
    if semi is not None and "semi" in state:  # else the teacher starts again from the resumed weights
        semi.load_state_dict(state["semi"])
    optimizer.load_state_dict(state["optimizer"])
    epoch = state["training"]["epoch"]
    if "rng" in state:  # the random states at the end of that epoch: the run goes on as if never stopped
        restore_random_states(state["rng"], rng, sampler, device)
    else:  # last.pt of emseg < 0.x without them: a fresh stream per epoch
        rng = np.random.default_rng([seed, epoch])
        sampler.rng = rng
    truncate_metrics(out_dir / METRICS_FILENAME, epoch)
    restore_best(out_dir, state)
    logger.info("resuming %s at epoch %d", out_dir, epoch)
    return rng


def _interrupted(out_dir: Path) -> None:
    """Ctrl-C: ``model.pt`` made consistent with ``last.pt``, then :class:`TrainingInterrupted` raised."""
    if not (out_dir / LAST_FILENAME).is_file():
        logger.warning("interrupted before the first epoch finished: nothing saved in %s", out_dir)
        raise
    last = load_checkpoint(out_dir / LAST_FILENAME)  # the epochs written; Ctrl-C may have hit between two writes
    restore_best(out_dir, last)
    done = last["training"]
    logger.warning("interrupted after epoch %d: the best checkpoint (epoch %d) is %s, the state to resume "
                   "from is %s", done["epoch"], done["best_epoch"], out_dir / MODEL_FILENAME,
                   out_dir / LAST_FILENAME)
    raise TrainingInterrupted(out_dir, epochs=done["epoch"], best_epoch=done["best_epoch"]) from None
