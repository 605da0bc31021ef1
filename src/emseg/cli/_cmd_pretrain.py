"""``emseg pretrain`` and ``emseg propagate``: learning from the unlabelled volume (issue 18)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emseg.cli._app import QUIET, _escape, _fail, _setup, _user_errors, console, err_console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``pretrain`` and ``propagate`` commands to ``app``."""
    app.command(name="pretrain")(pretrain)
    app.command(name="propagate")(propagate)


def pretrain(
    config: Annotated[Path, typer.Argument(help="Pretraining YAML: data.unlabelled, model (as for training), "
                                                "pretraining (method: mim | moco, max_minutes, ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for pretrained.pt, metrics.jsonl, ...")],
    max_minutes: Annotated[Optional[float], typer.Option(help="Override pretraining.max_minutes.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Start again in a non-empty output folder.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from last.pt in the output folder.")] = False,
    quiet: QUIET = False,
) -> None:
    """Self-supervised pretraining on unlabelled images; start training from it with `emseg train --init OUT`."""
    from emseg.pretraining import load_pretrain_config
    from emseg.pretraining import pretrain as _pretrain

    _setup(quiet)
    try:
        if max_minutes is not None and not max_minutes > 0:
            raise ValueError(f"--max-minutes must be a number of minutes above 0, got {max_minutes:g}")
        overrides = {"pretraining": {"max_minutes": max_minutes}} if max_minutes is not None else None
        cfg = load_pretrain_config(config, overrides=overrides)
        result = _pretrain(cfg, out, overwrite=overwrite, resume=resume, progress=not quiet)
    except _user_errors() as err:
        _fail(err)
    except KeyboardInterrupt:
        last = out / "last.pt"
        again = (f"; to continue: emseg pretrain {config} --out {out} --resume" if last.is_file()
                 else "; no epoch finished, nothing saved")
        err_console.print(f"interrupted{_escape(again)}")
        raise typer.Exit(code=130) from None
    console.print(f"pretrained: {result.checkpoint}  ({result.epochs} epochs, {result.iterations} steps, final "
                  f"loss {result.final_loss:.4f}; stopped: {result.stop_reason}); use it with: emseg train "
                  f"CONFIG --init {result.out_dir}")


def propagate(
    config: Annotated[Path, typer.Argument(help="Training YAML: data.train is one contiguous stack whose slices are "
                                                "the labelled sections; training applies to every round.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: round-NN/ (model, pseudo-labels, "
                                                          "confidence), model.pt, labels.tif.")],
    range_: Annotated[Optional[str], typer.Option("--range", help="Sections to cover, e.g. 0:30 (default: the "
                                                                   "whole stack).")] = None,
    step: Annotated[int, typer.Option(help="Sections added on each side per round.")] = 1,
    threshold: Annotated[str, typer.Option(help="Confidence for a pseudo-label: one value or one per class, "
                                                "e.g. 0.9 or 0.8,0.95.")] = "0.9",
    max_rounds: Annotated[Optional[int], typer.Option(help="Stop after this many propagation rounds.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty OUT that holds another propagation.")] = False,
    quiet: QUIET = False,
) -> None:
    """Propagate a few labelled sections through the stack (4S): train, pseudo-label the next sections, retrain.

    Running the same command again resumes: finished rounds are kept, an interrupted round's training resumes.
    """
    from emseg.config import load_config
    from emseg.training import TrainingInterrupted
    from emseg.training import propagate as _propagate

    _setup(quiet)
    try:
        try:
            values = [float(v) for v in threshold.split(",")]
        except ValueError:
            raise ValueError(f"--threshold must be numbers in (0, 1], e.g. 0.9 or 0.8,0.95; got {threshold!r}") from None
        result = _propagate(load_config(config), out, sections=range_, step=step,
                            threshold=values[0] if len(values) == 1 else values, max_rounds=max_rounds,
                            overwrite=overwrite, progress=not quiet)
    except _user_errors() as err:
        _fail(err)
    except (TrainingInterrupted, KeyboardInterrupt):
        err_console.print(f"interrupted; run the same command again to resume {_escape(str(out))}")
        raise typer.Exit(code=130) from None
    console.print(f"propagated over {len(result.covered)} sections in {len(result.rounds) - 1} round(s): model "
                  f"{result.model_path}, labels {result.labels_path}")
