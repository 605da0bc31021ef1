"""``emseg recipes``: the named training presets for ``emseg train CONFIG --recipe NAME``."""

from __future__ import annotations

from typing import Annotated

import typer

from emseg.cli._app import _fail, console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``recipes`` command to ``app``."""
    app.command(name="recipes")(recipes)


def recipes(
    show: Annotated[str, typer.Option(help="Print this preset's YAML instead of the list.")] = "",
) -> None:
    """List the training presets (use with 'emseg train CONFIG --recipe NAME'; CONFIG's keys win)."""
    from rich.table import Table

    from emseg.config import list_recipes, load_recipe, recipe_files

    if show:
        try:
            load_recipe(show)
        except ValueError as err:
            _fail(err)
        console.print(recipe_files()[show].read_text(), markup=False, highlight=False)
        return
    table = Table("name", "description", title="training recipes (emseg train CONFIG --recipe NAME)",
                  title_justify="left")
    for name, description in list_recipes().items():
        table.add_row(name, description)
    console.print(table)
