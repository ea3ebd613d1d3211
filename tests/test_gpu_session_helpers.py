"""The helpers of the GPU session script, on the host: the source finder that stands in for
an editable install, the offline wheel installer, and the smoke stage's report. (.ci/run
runs the whole script here, where every GPU stage must say "no CUDA device".)"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import sysconfig

import numpy
import pytest

from tests.session import smoke, source_install, wheels

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_source_finder_maps_every_package_of_setup_cfg():
    folders = source_install.package_folders()
    assert folders["cudeform"] == str(ROOT / "cudeform")
    assert folders["cudeform.adapters"] == str(ROOT / "adapters")
    assert folders["cudeform.adapters.torch"] == str(ROOT / "adapters" / "torch")
    assert folders["cudeform.kernels"] == str(ROOT / "kernels")
    assert folders["cudeform._gpu"] == str(ROOT / "cudeform" / "_gpu")


@pytest.mark.parametrize("cwd", ["elsewhere", "checkout"])
def test_source_finder_imports_the_adapters_without_an_install(tmp_path, cwd):
    """A Python that sees only site-packages without cudeform (no .pth of this venv is
    read) and the finder's folder imports cudeform and its adapters from the checkout,
    whether it starts in the checkout (as the session does) or elsewhere."""
    site = tmp_path / "site"
    site.mkdir()
    source_install.install(site)
    purelib = sysconfig.get_paths()["purelib"]
    script = (f"import sys, site; sys.path.append({purelib!r}); site.addsitedir({str(site)!r})\n"
              "import cudeform, cudeform.adapters, cudeform._gpu.compile\n"
              "print(cudeform.__file__); print(cudeform.adapters.__file__)\n")
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True,
                            text=True, cwd=ROOT if cwd == "checkout" else tmp_path)
    assert result.returncode == 0, result.stderr
    package, adapters = result.stdout.split()
    assert package == str(ROOT / "cudeform" / "__init__.py")
    assert adapters == str(ROOT / "adapters" / "__init__.py")


def test_wheels_are_installed_only_when_missing(tmp_path, monkeypatch):
    for name in ("numpy-0.0-cp312-cp312-manylinux_2_28_x86_64.whl",
                 "no_such_distribution-1.0-py3-none-any.whl",
                 "Another.Missing_one-2.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    calls = []

    def pip(paths):
        calls.append(sorted(p.name for p in paths))
        failing = len(paths) > 1 or paths[0].name.startswith("Another")
        return subprocess.CompletedProcess([], 1 if failing else 0, "", "ERROR: broken wheel")

    monkeypatch.setattr(wheels, "_pip_install", pip)
    outcome = wheels.install_missing(tmp_path)
    assert outcome["numpy-0.0-cp312-cp312-manylinux_2_28_x86_64.whl"] == (
        f"present ({numpy.__version__})")
    assert outcome["no_such_distribution-1.0-py3-none-any.whl"] == "installed"
    assert outcome["Another.Missing_one-2.0-py3-none-any.whl"] == "FAILED: ERROR: broken wheel"
    # all missing ones at once, then (as that failed) one by one
    assert calls[0] == ["Another.Missing_one-2.0-py3-none-any.whl",
                        "no_such_distribution-1.0-py3-none-any.whl"]
    assert len(calls) == 3
    assert wheels.distribution("Another.Missing_one-2.0-py3-none-any.whl") == "another-missing-one"


def test_smoke_covers_every_module_and_reports_errors():
    assert len(smoke.all_modules()) == 32  # 4 families x 4 element types x 2 index types
    compiled = smoke.compile_modules(lambda *module: None, smoke.all_modules()[:2])
    lines = []
    status = smoke.report(compiled, smoke.check_ops(smoke.NumpyDevice()), out=lines.append)
    assert status == 0, lines
    assert lines[0].startswith("compile deform_conv float int: ")
    # float32 NumPy against float64 NumPy: errors of float32 rounding, well under 1e-3
    assert lines[-1].startswith("summary: 2 modules compiled") and "0 failure(s)" in lines[-1]
    assert "deform_psroi_pool float32" in lines[-1]


def test_smoke_fails_on_a_compile_error_or_a_wrong_result(monkeypatch):
    def broken(family, element_type, index_type):
        raise RuntimeError("nvrtc: error: something")

    compiled = smoke.compile_modules(broken, smoke.all_modules()[:1])
    lines = []
    assert smoke.report(compiled, [], out=lines.append) == 1
    assert "FAILED RuntimeError" in lines[0]

    class Spoiled(smoke.NumpyDevice):
        def to_host(self, array, dtype_name):
            return array.astype(numpy.float64) * 1.01

    lines = []
    assert smoke.report([], smoke.check_ops(Spoiled()), out=lines.append) == 1
    assert any("MISSES its tolerance: output" in line for line in lines)
