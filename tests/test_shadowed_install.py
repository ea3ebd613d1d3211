"""A source checkout named ``cudeform`` in the current folder shadows the installed
package (Python imports the checkout as a namespace package): importing an adapter
says so, naming the folder and what to do, instead of an AttributeError inside it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _clone(tmp_path):
    checkout = tmp_path / "cudeform"  # the layout of a clone: adapters/ and cudeform/
    checkout.mkdir()
    (checkout / "adapters").symlink_to(ROOT / "adapters", target_is_directory=True)
    (checkout / "cudeform").symlink_to(ROOT / "cudeform", target_is_directory=True)
    return checkout


def _message(checkout):
    return (f"ImportError: cudeform was imported from the folder {checkout}, which is not "
            f"the cudeform package: it has no __init__.py, so Python took it for a "
            f"namespace package. It is probably the source checkout, found in the current "
            f"folder, and it shadows the installed package. Run Python from another folder "
            f"(inside the checkout works), or take that folder off sys.path.")


def test_an_adapter_import_names_the_shadowing_folder(tmp_path):
    checkout = _clone(tmp_path)
    # -S: no site-packages, so whatever the install (editable or not) the checkout is
    # what "import cudeform" finds, as it is for an editable install run from there.
    result = subprocess.run([sys.executable, "-S", "-c", "import cudeform.adapters.torch"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == _message(checkout)


def _editable_install():
    """Whether cudeform is installed in editable mode (setuptools' import finder)."""
    return any(getattr(finder, "__module__", "").startswith("__editable___cudeform")
               for finder in sys.meta_path)


@pytest.mark.skipif(not _editable_install(), reason="needs an editable install of cudeform "
                    "(a regular one is not shadowed)")
def test_python_m_cudeform_names_the_shadowing_folder(tmp_path):
    # The editable install's finder runs cudeform/__main__.py of the checkout, while
    # "import cudeform" inside it finds the folder.
    checkout = _clone(tmp_path)
    result = subprocess.run([sys.executable, "-m", "cudeform", "--version"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == _message(checkout)


def test_the_adapters_import_from_inside_the_checkout():
    result = subprocess.run([sys.executable, "-c", "import cudeform.adapters; print('ok')"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
