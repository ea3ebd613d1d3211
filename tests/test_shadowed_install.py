"""A source checkout named ``cudeform`` in the current folder shadows the installed
package (Python imports the checkout as a namespace package): importing an adapter
says so, naming the folder and what to do, instead of an AttributeError inside it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_an_adapter_import_names_the_shadowing_folder(tmp_path):
    checkout = tmp_path / "cudeform"  # the layout of a clone: adapters/ and cudeform/
    checkout.mkdir()
    (checkout / "adapters").symlink_to(ROOT / "adapters", target_is_directory=True)
    (checkout / "cudeform").symlink_to(ROOT / "cudeform", target_is_directory=True)
    # -S: no site-packages, so whatever the install (editable or not) the checkout is
    # what "import cudeform" finds, as it is for an editable install run from there.
    result = subprocess.run([sys.executable, "-S", "-c", "import cudeform.adapters.torch"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"ImportError: cudeform was imported from the folder {checkout}, which is not the "
        f"cudeform package: it has no __init__.py, so Python took it for a namespace "
        f"package. It is probably the source checkout, found in the current folder, and it "
        f"shadows the installed package. Run Python from another folder (inside the "
        f"checkout works), or take that folder off sys.path.")


def test_the_adapters_import_from_inside_the_checkout():
    result = subprocess.run([sys.executable, "-c", "import cudeform.adapters; print('ok')"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
