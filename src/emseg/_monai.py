"""MONAI imported without Hugging Face ``transformers``, which emseg never uses and which costs seconds.

``import monai`` imports every MONAI submodule (its ``__init__`` walks the package).  One of them,
``monai.networks.nets.transchex``, imports ``transformers`` where it is installed, and ``transformers``
imports ``torch._dynamo`` and ``torch.distributed.fsdp`` in turn: 2.0 s more for ``import monai`` on a
2-core CPU and most of the 21 s start-up of ``emseg predict`` measured on a GPU host
(docs/BENCHMARKS.md).  No emseg network is built from ``transformers``.

So :func:`install` (run by ``import emseg``, before any of its modules imports MONAI) puts a finder on
``sys.meta_path`` that makes ``transformers`` look missing *while MONAI is being imported* and at no other
time: MONAI's optional import then marks only its ``Transchex`` network unusable in this process, and
``transformers`` imports normally afterwards for any other code.  Nothing changes where MONAI or
``transformers`` was imported before emseg, and ``EMSEG_MONAI_TRANSFORMERS=1`` turns the finder off.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

__all__ = ["ENV_KEEP", "install"]

#: Environment variable: ``1`` imports MONAI with ``transformers`` as it is (e.g. to use MONAI's Transchex).
ENV_KEEP = "EMSEG_MONAI_TRANSFORMERS"

_HIDDEN = "transformers"


class _HideFromMonai(importlib.abc.MetaPathFinder):
    """Refuses ``transformers`` (and its submodules) while the ``monai`` package is being initialised."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if name.partition(".")[0] == _HIDDEN and _monai_initialising():
            raise ModuleNotFoundError(f"No module named {name!r} (hidden from MONAI's import by emseg; "
                                      f"{ENV_KEEP}=1 keeps it)", name=name)
        return None


def _monai_initialising() -> bool:
    monai = sys.modules.get("monai")
    spec = getattr(monai, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))  # set by importlib while a module's code runs


def install() -> None:
    """Put the finder in place (once), unless MONAI is imported already or ``EMSEG_MONAI_TRANSFORMERS=1``."""
    if "monai" in sys.modules or os.environ.get(ENV_KEEP, "") == "1":
        return
    if not any(isinstance(finder, _HideFromMonai) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HideFromMonai())
