"""The documentation against the code: the API reference (``docs/api.rst``) lists every
public name of every public module and nothing else, every public function's docstring
has an example that runs (doctest), and the time-split script of the performance page
still finds the GEMMs it clocks.

A module whose framework is missing (torch, onnxscript, Chainer) is skipped.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "api.rst"

# Every public module and what it needs beyond NumPy.
PUBLIC_MODULES = {
    "cudeform": (),
    "cudeform.adapters.torch": ("torch",),
    "cudeform.adapters.torch.mmcv": ("torch",),
    "cudeform.adapters.torch_layers": ("torch",),
    "cudeform.adapters.torch_onnx": ("torch", "onnxscript"),
    "cudeform.adapters.chainer": ("chainer",),
}

# torch.export's own pytree code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def documented_names():
    """``{module: [names]}`` of the autosummary lists of the API page, each list under
    the ``currentmodule`` that precedes it."""
    names, module, in_list = {}, None, False
    for line in API_PAGE.read_text().splitlines():
        if line.startswith(".. currentmodule::"):
            module = line.split("::", 1)[1].strip()
        elif line.startswith(".. autosummary::"):
            in_list = True
        elif in_list and re.fullmatch(r"   [A-Za-z_]\w*", line):
            names.setdefault(module, []).append(line.strip())
        elif in_list and line and not line.startswith("   "):
            in_list = False
    return names


DOCUMENTED = documented_names()


def import_public(module_name):
    for requirement in PUBLIC_MODULES[module_name]:
        if importlib.util.find_spec(requirement) is None:
            pytest.skip(f"{module_name} needs {requirement}, which is not installed")
    return importlib.import_module(module_name)


def test_the_api_page_documents_the_modules():
    assert set(DOCUMENTED) <= set(PUBLIC_MODULES)
    assert len(DOCUMENTED["cudeform"]) == len(importlib.import_module("cudeform").__all__)


@pytest.mark.parametrize("module_name", sorted(PUBLIC_MODULES))
def test_the_api_reference_lists_every_public_name(module_name):
    """Each name of ``__all__`` is listed under its module, or is the same object as a
    name listed under another module (a re-export, which the page says in words);
    each listed name is in ``__all__``."""
    module = import_public(module_name)
    listed = DOCUMENTED.get(module_name, [])
    elsewhere = {id(getattr(import_public(other), name))
                 for other, names in DOCUMENTED.items() if other != module_name
                 for name in names}
    missing = [name for name in module.__all__
               if name not in listed and id(getattr(module, name)) not in elsewhere]
    assert missing == []
    assert [name for name in listed if name not in module.__all__] == []


def public_functions():
    """``(module, name)`` of each function the API page lists: the lower-case names
    (classes and types are capitalised)."""
    return [(module_name, name) for module_name, names in sorted(DOCUMENTED.items())
            for name in names if name[0].islower()]


@pytest.mark.parametrize("module_name, name", public_functions(),
                         ids=[f"{m}.{n}" for m, n in public_functions()])
def test_each_public_function_has_an_example_that_runs(module_name, name):
    function = getattr(import_public(module_name), name)
    assert inspect.isfunction(function)
    tests = doctest.DocTestFinder(recurse=False).find(function, f"{module_name}.{name}",
                                                      globs={})
    assert tests and tests[0].examples, f"{module_name}.{name} has no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_the_time_split_script_clocks_gemms_and_the_scatter():
    """``docs/time_split.py --quick``: on C1, the GEMMs and the rest of each pass take
    time, and the scatter is found in the backward only."""
    pytest.importorskip("onnxruntime")  # the script sets each pass beside onnxruntime's
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "time_split.py"), "--quick"],
                            capture_output=True, text=True, timeout=120, check=True)
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] == "C1":
            rows[cells[1]] = cells
    assert set(rows) == {"fwd", "bwd"}, result.stdout
    for passes, cells in rows.items():
        gemm, rest = float(cells[3]), float(cells[6])
        scatter = float(cells[5]) if cells[5] else 0.0
        assert gemm > 0 and rest > 0
        assert (scatter > 0) == (passes == "bwd")
