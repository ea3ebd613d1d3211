"""Every Python block of the README and of the docs pages (``docs/*.md``) runs on its own:
in a fresh namespace (nothing defined or imported beforehand) and an empty folder.

A block marked ``<!-- gpu -->`` on the line before its fence needs a CUDA device
and is skipped without one; a block that imports an optional package (torch,
onnxruntime, Chainer) is skipped when that package is missing; every other block
must run here as written. CI runs the README's set-up commands (``.ci/run``).
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import re

import pytest

from tests.gpu import NO_GPU

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
GPU_MARK = "<!-- gpu -->"

# torch.export's own pytree code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def fenced_blocks(path, language):
    """``(first line number, code, marked GPU)`` of each ``language`` block of ``path``."""
    text = path.read_text()
    blocks = []
    for match in re.finditer(rf"```{language}\n(.*?)```", text, flags=re.S):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text[:match.start()].count("\n") + 2
        blocks.append((line, match.group(1), before.strip() == GPU_MARK))
    return blocks


BLOCKS = [(page.relative_to(ROOT).as_posix(), *block)
          for page in PAGES for block in fenced_blocks(page, "python")]


def test_the_pages_have_their_blocks():
    readme = [block for block in BLOCKS if block[0] == "README.md"]
    assert len(readme) >= 2 and len(BLOCKS) >= 20 and any(gpu for *_, gpu in BLOCKS)


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


@pytest.mark.parametrize("page, line, code, gpu", BLOCKS,
                         ids=[f"{block[0]}:{block[1]}" for block in BLOCKS])
def test_block_runs_on_its_own(page, line, code, gpu, tmp_path, monkeypatch):
    if gpu and NO_GPU is not None:
        pytest.skip(f"marked {GPU_MARK}: {NO_GPU}")
    skip_without_optional_packages(code)
    if "torch" in imported_modules(code) or any(
            module.startswith("cudeform.adapters.torch") for module in imported_modules(code)):
        import torch

        torch._dynamo.reset()  # no compiled graph survives from an earlier block
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__readme__"})


def _commands(blocks):
    """The commands of shell blocks, one per ``&&``-separated part of each line."""
    return [part.strip() for _, code, _ in blocks for line in code.splitlines()
            for part in line.split("&&") if part.strip() and not part.strip().startswith("#")]


def test_ci_runs_the_readmes_setup_commands():
    """Each ``pip install`` and ``pytest`` of the README's first two shell blocks (the
    set-up commands) is a line of ``.ci/run``."""
    ci = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    setup = _commands(fenced_blocks(README, "sh")[:2])
    checked = [command for command in setup if command.startswith(("pip install", "pytest"))]
    assert len(checked) >= 3, setup
    assert [command for command in checked if command not in ci] == []
