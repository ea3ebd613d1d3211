"""The public surface of the PyTorch adapter: its import paths, and type annotations on
every public function and layer method (``torch.Tensor`` for tensors), resolvable by
``typing.get_type_hints``.

Skipped when PyTorch cannot be imported (install the ``torch`` extra).
"""

from __future__ import annotations

import importlib
import inspect
import typing

import pytest

torch = pytest.importorskip("torch")

MODULES = ("cudeform.adapters.torch", "cudeform.adapters.torch.functional",
           "cudeform.adapters.torch.layers", "cudeform.adapters.torch.pool_layers",
           "cudeform.adapters.torch.mmcv", "cudeform.adapters.torch_layers")


def public_callables():
    """``(qualified name, function)`` of every public function of the modules, and of
    the constructor and every public method a public class defines itself."""
    seen = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isfunction(value):
                seen[f"{value.__module__}.{name}"] = value
            elif inspect.isclass(value):
                for attribute, member in vars(value).items():
                    if inspect.isfunction(member) and (attribute == "__init__"
                                                       or not attribute.startswith("_")):
                        seen[f"{value.__module__}.{value.__name__}.{attribute}"] = member
    return sorted(seen.items())


CALLABLES = public_callables()


def test_import_paths():
    from cudeform.adapters import torch as adapter
    from cudeform.adapters import torch_layers
    from cudeform.adapters.torch import mmcv

    assert torch_layers.DeformConv2dPack is adapter.DeformConv2dPack is mmcv.DeformConv2dPack
    assert len(CALLABLES) > 30


def test_onnx_translation_table_import_path():
    pytest.importorskip("onnxscript")
    from cudeform.adapters.torch_onnx import onnx_translation_table

    assert torch.ops.cudeform.deform_conv2d.default in onnx_translation_table()


@pytest.mark.parametrize("name, function", CALLABLES, ids=[n for n, _ in CALLABLES])
def test_every_public_callable_is_annotated(name, function):
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    for parameter in signature.parameters.values():
        if parameter.name == "self":
            continue
        assert parameter.name in hints, f"{name}: {parameter.name} has no annotation"
    assert "return" in hints, f"{name}: no return annotation"
    for parameter in ("input", "offset", "weight", "rois", "x", "features", "score_maps"):
        if parameter in hints:
            assert torch.Tensor in (hints[parameter], *typing.get_args(hints[parameter])), \
                f"{name}: {parameter} is {hints[parameter]}"
