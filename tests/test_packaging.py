"""The wheel carries the kernels and the adapters, so a non-editable install works."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNEL_FILES = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    pytest.importorskip("build.__main__")  # the build tool, not a stray build/ folder
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
         str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (path,) = out.glob("cudeform-*.whl")
    return path


def test_wheel_contains_kernels_and_adapters(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kernel in KERNEL_FILES:
        assert f"cudeform/kernels/{kernel}" in names
    assert "cudeform/adapters/__init__.py" in names
    assert "cudeform/py.typed" in names  # PEP 561: type checkers read the annotations
    assert any(name.endswith(".dist-info/licenses/LICENSE") or name.endswith("/LICENSE")
               for name in names)
    assert {"cudeform/adapters/torch/__init__.py", "cudeform/adapters/torch/mmcv.py",
            "cudeform/adapters/torch_layers.py", "cudeform/adapters/torch_onnx.py"} <= names
    assert "cudeform/_gpu/launch.py" in names and "cudeform/_cpu/deform_conv.py" in names
    assert not any(name.startswith(("tests/", "kernels/", "adapters/")) for name in names)


def test_installed_wheel_finds_its_own_kernels(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--target", str(target), str(wheel)], check=True)
    probe = (
        "import numpy, cudeform, cudeform.adapters\n"
        "from cudeform._gpu.source import family_source, kernel_dir\n"
        "print(kernel_dir())\n"
        "assert 'deform_im2col' in family_source('deform_conv')\n"
        "x = numpy.ones((1, 1, 3, 3)); w = numpy.ones((1, 1, 1, 1))\n"
        "print(cudeform.deform_conv2d(x, numpy.zeros((1, 2, 3, 3)), w).sum())\n"
    )
    # Run from an empty folder so that the source checkout is not importable.
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kernel_dir, total = result.stdout.split()
    assert pathlib.Path(kernel_dir) == target / "cudeform" / "kernels"
    assert float(total) == 9.0
