"""Tables (object measurements, volume fractions, query results) as ``.parquet`` or ``.csv`` files."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._atomic import atomic_output, remove_path, temporary_sibling

__all__ = ["TABLE_SUFFIXES", "read_table", "write_csv_rows", "write_table"]

#: Suffixes of table files and the format each means.
TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def read_table(path: str | os.PathLike, *, what: str = "table") -> Any:
    """A ``pandas.DataFrame`` from a ``.parquet`` (``.pq``) or ``.csv`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message calls it ``what``).
        ValueError: another suffix.
    """
    import pandas as pd  # lazy: pandas is only needed by the analysis commands

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{what} {path}: unknown suffix {path.suffix.lower() or 'none'!r}; expected .parquet or .csv")
    return pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path)


def write_csv_rows(path: str | os.PathLike, header: Sequence[str], rows: Any) -> None:
    """Write a CSV file of ``header`` and ``rows`` (sequences of values; None is an empty cell) atomically,
    replacing an existing file; no pandas needed (run summaries, reports)."""
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(list(header))
            writer.writerows(rows)


def write_table(df: Any, path: str | os.PathLike | Sequence[str | os.PathLike], *, overwrite: bool = True) -> list[str]:
    """Write a table to ``.parquet`` and/or ``.csv`` atomically (one file per path given).

    Every file is first written under a hidden temporary name next to it; only
    when all of them are complete are they renamed into place, so a failure
    (a full disk, say) leaves none of the tables, only the previous files.

    Args:
        df: a ``pandas.DataFrame``.
        path: one path or a list of paths; the suffix picks the format.
        overwrite: replace existing files (else FileExistsError before anything is written).

    Returns:
        The paths written.

    Raises:
        ValueError: a suffix other than ``.parquet`` (``.pq``) or ``.csv``.
        FileExistsError: a file exists and ``overwrite`` is False.
        OSError: a table could not be written (the message names it); nothing was written.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for p in paths:
        if Path(p).suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"{os.fspath(p)}: table files must end in .parquet or .csv")
        if not overwrite and Path(p).exists():
            raise FileExistsError(f"{os.fspath(p)} already exists; pass --overwrite to replace it")
    staged: list[tuple[Path, Path]] = []
    try:
        for p in paths:
            final = Path(p)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_sibling(final)
            staged.append((tmp, final))
            try:
                if TABLE_SUFFIXES[final.suffix.lower()] == "parquet":
                    df.to_parquet(tmp, index=False)
                else:
                    df.to_csv(tmp, index=False)
            except OSError as err:
                failure = OSError(f"could not write the table {final}: {err.strerror or err}. Free some space "
                                  "or choose another --out folder; no table was written")
                failure.errno = err.errno
                raise failure from None
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            remove_path(tmp)
        raise
    return [os.fspath(p) for p in paths]
