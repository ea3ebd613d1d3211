"""Every Python block of the README's PyTorch section (which includes ONNX) runs on its
own, in a fresh namespace and an empty folder. Blocks marked ``<!-- gpu -->`` on the
line before their fence need a CUDA device and are skipped without one.

Skipped without PyTorch, onnxscript or onnxruntime (the ONNX block needs them).
"""

from __future__ import annotations

import pathlib
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
GPU_MARK = "<!-- gpu -->"

# torch.export's own pytree code, not ours
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def torch_section_blocks():
    """``(first line number, code, needs a GPU)`` of each Python block of the section."""
    text = README.read_text()
    start = text.index("\n## PyTorch\n")
    end = text.index("\n## ", start + 1)
    offset = text[:start].count("\n") + 1
    blocks = []
    for match in re.finditer(r"```python\n(.*?)```", text[start:end], flags=re.S):
        before = text[start:start + match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = offset + text[start:start + match.start()].count("\n") + 1
        blocks.append((line, match.group(1), before.strip() == GPU_MARK))
    return blocks


BLOCKS = torch_section_blocks()


def test_the_section_has_its_blocks():
    assert len(BLOCKS) >= 7 and any(gpu for _, _, gpu in BLOCKS)


@pytest.mark.parametrize("line, code, gpu", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_block_runs_on_its_own(line, code, gpu, tmp_path, monkeypatch):
    if gpu and not torch.cuda.is_available():
        pytest.skip("marked <!-- gpu -->: PyTorch sees no CUDA device")
    monkeypatch.chdir(tmp_path)
    torch._dynamo.reset()
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
