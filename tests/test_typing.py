"""Every public function and layer carries type annotations, and a type checker reads
them: the package ships ``py.typed``, and mypy flags wrong calls in user code."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import cudeform

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Public modules and the frameworks they need (None: nothing beyond NumPy). The torch
# adapter's annotations are checked in test_adapter_torch_api.py.
PUBLIC_MODULES = {
    "cudeform": None,
    "cudeform.adapters.chainer": "chainer",
}


def _public_callables(module):
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value):
            for method in ("__init__", "forward"):
                if method in vars(value):
                    yield f"{name}.{method}", vars(value)[method]
        elif inspect.isfunction(value):
            yield name, value


def _missing_annotations(function):
    signature = inspect.signature(function)
    missing = [p.name for p in signature.parameters.values()
               if p.name != "self" and p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_functions_and_layers_are_annotated(module_name):
    if PUBLIC_MODULES[module_name]:
        if module_name.endswith("chainer"):
            from cudeform.adapters import _chainer_compat  # noqa: F401  (before chainer)
        pytest.importorskip(PUBLIC_MODULES[module_name])
    module = importlib.import_module(module_name)
    found = dict(_public_callables(module))
    assert found, module_name
    missing = {name: gaps for name, function in found.items()
               if (gaps := _missing_annotations(function))}
    assert not missing, f"{module_name}: unannotated parameters {missing}"


def test_gradient_tuples_have_typed_fields():
    for grads in (cudeform.DeformConv2dGrads, cudeform.DeformRoIPoolGrads,
                  cudeform.DeformPSRoIPoolGrads):
        assert set(grads.__annotations__) == set(grads._fields)


USER_CODE = """
    import numpy as np
    import cudeform

    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    y = cudeform.deform_conv2d(x, np.zeros((1, 18, 4, 4), np.float32), w, padding=(1, 1))
    g = cudeform.deform_conv2d_backward(y, x, np.zeros((1, 18, 4, 4), np.float32), w, padding=1)
    reveal_type(g.bias)
    cudeform.deform_conv2d(x, x, w, padding="1")
    cudeform.set_workspace_limit(1.5)
"""


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_reads_the_annotations(tmp_path):
    script = tmp_path / "user_code.py"
    script.write_text(textwrap.dedent(USER_CODE))
    env = dict(os.environ, MYPYPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
         "--cache-dir", os.devnull, str(script)],
        capture_output=True, text=True, cwd=tmp_path, env=env)
    lines = result.stdout.splitlines()
    assert any('Revealed type is "numpy.ndarray' in line and "| None" in line
               for line in lines), result.stdout
    assert any(':10: error: Argument "padding" to "deform_conv2d" has incompatible type "str"'
               in line for line in lines), result.stdout
    assert any(':11: error: Argument 1 to "set_workspace_limit" has incompatible type "float"'
               in line for line in lines), result.stdout
    assert result.stdout.count(": error:") == 2, result.stdout


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_the_public_modules_type_check():
    files = ["__init__.py", "_typing.py", "deform_conv.py", "deform_roi_pool.py",
             "deform_psroi_pool.py", "_workspace.py", "_cli.py", "__main__.py",
             "_layer_arguments.py"]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--no-incremental", "--cache-dir", os.devnull,
         *(str(ROOT / "cudeform" / name) for name in files)],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
