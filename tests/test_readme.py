"""Every Python block of the README runs on its own: in a fresh namespace (nothing
defined or imported beforehand) and an empty folder.

A block marked ``<!-- gpu -->`` on the line before its fence needs a CUDA device
and is skipped without one; every other block must run here as written.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re

import pytest

from tests.gpu import NO_GPU

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
GPU_MARK = "<!-- gpu -->"

# torch.export's own pytree code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def readme_blocks():
    """``(first line number, code, needs a GPU)`` of each Python block."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text[:match.start()].count("\n") + 2
        blocks.append((line, match.group(1), before.strip() == GPU_MARK))
    return blocks


BLOCKS = readme_blocks()


def test_the_readme_has_its_blocks():
    assert len(BLOCKS) >= 12 and any(gpu for _, _, gpu in BLOCKS)


# Optional packages a block may need, directly or through the adapter it imports.
OPTIONAL = {"torch": "torch", "torchvision": "torchvision", "onnx": "onnx",
            "onnxruntime": "onnxruntime", "onnxscript": "onnxscript", "chainer": "chainer",
            "openvino": "openvino", "matplotlib": "matplotlib", "tqdm": "tqdm",
            "ml_dtypes": "ml_dtypes", "cupy": "cupy", "cudeform.adapters.chainer": "chainer",
            "cudeform.adapters.chainer_links": "chainer", "cudeform.adapters.torch": "torch",
            "cudeform.adapters.torch_layers": "torch",
            "cudeform.adapters.torch_onnx": "onnxscript"}


def imported_modules(code):
    """The modules a block imports (``import a.b`` and ``from a.b import c`` give a.b)."""
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def skip_without_optional_packages(code):
    """Skip when a package the block needs is not installed (looked up, not imported:
    Chainer must be imported after cudeform's adapter)."""
    for module in sorted(imported_modules(code)):
        for prefix, package in OPTIONAL.items():
            if (module == prefix or module.startswith(prefix + ".")) and (
                    importlib.util.find_spec(package) is None):
                pytest.skip(f"needs {package}, which is not installed")


def test_optional_imports_are_found():
    code = "import onnxruntime\nfrom cudeform.adapters import chainer as dcn\nimport numpy"
    assert imported_modules(code) == {"onnxruntime", "cudeform.adapters",
                                      "cudeform.adapters.chainer", "numpy"}


@pytest.mark.parametrize("line, code, gpu", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_block_runs_on_its_own(line, code, gpu, tmp_path, monkeypatch):
    if gpu and NO_GPU is not None:
        pytest.skip(f"marked {GPU_MARK}: {NO_GPU}")
    skip_without_optional_packages(code)
    if "torch" in code:
        torch = pytest.importorskip("torch")
        torch._dynamo.reset()  # no compiled graph survives from an earlier block
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
