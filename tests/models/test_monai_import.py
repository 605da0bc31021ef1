"""emseg imports MONAI without Hugging Face transformers (emseg._monai), and leaves transformers usable afterwards.

Each case runs in a fresh interpreter (sys.modules must not hold MONAI yet) with a stand-in ``transformers``
package on the path that records every import of itself in a file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture()
def fake_transformers(tmp_path: Path) -> Path:
    package = tmp_path / "site" / "transformers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(f"""
        with open({str(tmp_path / 'imported.txt')!r}, "a") as f:
            f.write("transformers\\n")
        __version__ = "0.0-test"
    """))
    return tmp_path


def _run(tmp: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "EMSEG_MONAI_TRANSFORMERS"}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp / "site"), str(SRC)])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, capture_output=True,
                          text=True, timeout=300)


def _imports(tmp: Path) -> list[str]:
    marker = tmp / "imported.txt"
    return marker.read_text().split() if marker.exists() else []


def test_building_a_network_does_not_import_transformers_and_transformers_still_imports_later(fake_transformers):
    done = _run(fake_transformers, """
        import sys
        from emseg.models import build_model
        build_model("unet2d", in_channels=1, num_classes=2)
        assert "monai" in sys.modules
        assert "transformers" not in sys.modules, "MONAI's import pulled in transformers"
        import transformers  # anyone else's import works as before
        assert transformers.__version__ == "0.0-test"
    """)
    assert done.returncode == 0, done.stderr
    assert _imports(fake_transformers) == ["transformers"]  # once: the explicit import at the end


def test_monai_imports_transformers_as_before_when_asked(fake_transformers):
    done = _run(fake_transformers, """
        import sys
        import emseg.models._unet
        assert "transformers" in sys.modules
    """, EMSEG_MONAI_TRANSFORMERS="1")
    assert done.returncode == 0, done.stderr
    assert _imports(fake_transformers) == ["transformers"]  # by MONAI's own import (the stand-in exists)


def test_nothing_changes_when_monai_was_imported_before_emseg(fake_transformers):
    done = _run(fake_transformers, """
        import sys
        import monai
        import emseg, emseg.models._unet
        from emseg._monai import _HideFromMonai
        assert not any(isinstance(f, _HideFromMonai) for f in sys.meta_path)
    """)
    assert done.returncode == 0, done.stderr
    assert _imports(fake_transformers) == ["transformers"]
