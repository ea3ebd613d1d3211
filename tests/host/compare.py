"""One op run through the host-compiled kernels and compared with its NumPy path.

The host logic of ``cudeform._gpu.<op>`` runs with ``xp=numpy``, launches the
kernels through :func:`tests.host.loader.host_launch` (or a launcher that wraps it)
and runs its GEMMs with the GEMM module's NumPy twin; ``cudeform._cpu.<op>`` is the
NumPy path it must agree with. ``deterministic`` chooses the scatter mode (float
atomics or 64-bit fixed point), as ``cudeform.set_deterministic`` does on the GPU.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Callable

import numpy
import pytest

from cudeform._gpu.gemm import numpy_gemm
from tests.helpers import TOLERANCES, numerical_gradient
from tests.host.loader import host_launch

# Run a host test in both scatter modes; "deterministic" puts it under -k determinis.
scatter_modes = pytest.mark.parametrize("deterministic", [False, True],
                                        ids=["default", "deterministic"])


def recording_launch(calls):
    """A launcher that appends ``(kernel, index bits, thread count)`` to ``calls``."""
    def launch(kernel, dtype_name, bits, count, **args):
        calls.append((kernel, bits, count))
        return host_launch(kernel, dtype_name, bits, count, **args)
    return launch


def counting_launch(calls):
    """A launcher that only appends ``(kernel, index bits, thread count)`` to ``calls``,
    after the argument checks of a real launch; it runs nothing, so it can drive the
    host logic on the real shapes of large layers (on arrays that need not be filled)."""
    from cudeform._gpu.launch import kernel_arguments

    def launch(kernel, dtype_name, bits, count, **args):
        kernel_arguments(kernel, dtype_name, bits, args)
        calls.append((kernel, bits, count))
    return launch


@dataclasses.dataclass(frozen=True)
class HostOp:
    """An op's GPU host logic and NumPy path, and how its arguments are named."""

    gpu: types.ModuleType  # cudeform._gpu.<op>
    cpu: types.ModuleType  # cudeform._cpu.<op>
    shape_rule: Callable   # cudeform._shapes.<op>_geometry, on the operands' shapes
    operand_names: tuple   # the array arguments, in the order of forward and backward
    grad_names: tuple      # the operands that backward returns gradients for

    def operands(self, arrays):
        return tuple(arrays[name] for name in self.operand_names)

    def geometry(self, arrays, options):
        shapes = (None if array is None else array.shape for array in self.operands(arrays))
        return self.shape_rule(*shapes, **options)

    def engine(self, arrays, launch, deterministic, gemm=numpy_gemm):
        """The keyword arguments of the host logic, as ``cudeform._arrays.on_gpu`` gives
        them on the GPU, with the host's launcher and GEMM runner."""
        return dict(dtype_name=arrays["input"].dtype.name, xp=numpy, launch=launch, gemm=gemm,
                    deterministic=deterministic)

    def forward(self, arrays, options, launch=host_launch, deterministic=False):
        return self.gpu.forward(*self.operands(arrays), self.geometry(arrays, options),
                                **self.engine(arrays, launch, deterministic))

    def backward(self, grad_output, arrays, options, launch=host_launch, deterministic=False):
        return self.gpu.backward(grad_output, *self.operands(arrays),
                                 self.geometry(arrays, options),
                                 **self.engine(arrays, launch, deterministic))

    def grad_output(self, rng, arrays, options):
        """A random output gradient in the dtype of ``arrays``."""
        return rng.standard_normal(self.geometry(arrays, options).output_shape).astype(
            arrays["input"].dtype)

    def assert_matches_numpy(self, arrays, options, grad_output, launch=host_launch,
                             deterministic=False):
        """Host-run forward and gradients equal the NumPy path's; all finite. Returns them."""
        g = self.geometry(arrays, options)
        rtol, atol = TOLERANCES[arrays["input"].dtype]
        output = self.forward(arrays, options, launch, deterministic)
        expected = self.cpu.forward(*self.operands(arrays), g)
        assert output.dtype == expected.dtype and output.shape == expected.shape
        assert numpy.isfinite(output).all()
        numpy.testing.assert_allclose(output, expected, rtol=rtol, atol=atol, err_msg="output")

        grads = self.backward(grad_output, arrays, options, launch, deterministic)
        expected_grads = self.cpu.backward(grad_output, *self.operands(arrays), g)
        for name, got, want in zip(self.grad_names, grads, expected_grads):
            if want is None:
                assert got is None, name
                continue
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert numpy.isfinite(got).all(), name
            numpy.testing.assert_allclose(got, want, rtol=rtol, atol=atol,
                                          err_msg=f"grad {name}")
        return output, grads

    def assert_backward_matches_central_differences(self, arrays, options, grad_output,
                                                    deterministic=False):
        """The host-run backward is the derivative of the host-run forward (float64).

        The loss is linear in each single element (bilinear in y and x separately), so
        central differences are exact up to rounding and the step can be large, which
        keeps the rounding error under the float64 tolerance. The case must keep every
        sample on one bilinear piece under that step.
        """
        grads = self.backward(grad_output, arrays, options, deterministic=deterministic)

        def loss():
            return float(numpy.sum(self.forward(arrays, options) * grad_output))

        rtol, atol = TOLERANCES[numpy.dtype(numpy.float64)]
        for name, grad in zip(self.grad_names, grads):
            expected = numerical_gradient(loss, arrays[name], step=1e-3)
            numpy.testing.assert_allclose(grad, expected, rtol=rtol, atol=atol,
                                          err_msg=f"grad {name}")
