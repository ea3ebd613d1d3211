"""One memory pool with torch: inside the adapter's CUDA calls, CuPy allocates from torch's
caching allocator on the tensors' device, and the outputs come back as the torch tensors
that own their memory.

The host tests run CuPy's real allocator plumbing with a fake ``torch.empty`` that hands
out CPU byte tensors: ``cupy.empty`` only calls the allocator and never touches the
memory, so no GPU is needed. The GPU tests check torch's memory statistics and CuPy's
pool on real calls.
"""

from __future__ import annotations

import contextlib
import gc
import weakref

import numpy
import pytest

torch = pytest.importorskip("torch")
cupy = pytest.importorskip("cupy")

from cudeform.adapters.torch import _allocator, _to_core  # noqa: E402
from tests.gpu import NO_GPU  # noqa: E402


class _Buffer(bytearray):
    """Host bytes behind a fake block; its finalizer runs when torch frees the storage."""


class FakeEmpty:
    """``torch.empty`` for the allocator: CPU byte tensors standing for CUDA blocks; records
    each request and each block's release (when its storage is freed, views included)."""

    def __init__(self):
        self.requests, self.released = [], []

    def __call__(self, shape, *, dtype, device):
        self.requests.append((shape, dtype, device))
        buffer = _Buffer(shape[0])
        tensor = torch.frombuffer(buffer, dtype=dtype)
        weakref.finalize(buffer, self.released.append, tensor.data_ptr())
        return tensor


def test_blocks_come_from_torch_on_the_device_and_go_back_once():
    empty = FakeEmpty()
    with cupy.cuda.using_allocator(_allocator.torch_allocator(1, empty=empty)):
        array = cupy.empty((3, 4), cupy.float32)
    (shape, dtype, device), = empty.requests
    assert shape == (48,) and dtype == torch.uint8 and device == torch.device("cuda", 1)
    assert array.data.device_id == 1
    block_pointer = array.data.ptr
    view = array[1:]
    del array
    gc.collect()
    assert empty.released == []  # the view keeps the block
    del view
    gc.collect()
    assert empty.released == [block_pointer]
    gc.collect()
    assert empty.released == [block_pointer]


def test_torch_allocations_are_in_force_only_inside_the_context():
    before = cupy.cuda.get_allocator()
    with _allocator.torch_allocations(2):
        inside = cupy.cuda.get_allocator()
        assert getattr(inside, "device_index", None) == 2
    assert cupy.cuda.get_allocator() is before
    assert getattr(before, "device_index", None) is None


class Recorder:
    """Contexts that log entering and leaving, and the allocator in force inside."""

    def __init__(self):
        self.log = []

    @contextlib.contextmanager
    def context(self, name):
        self.log.append(("enter", name))
        yield
        self.log.append(("exit", name))


def test_the_adapter_allocates_from_torch_on_the_tensors_device_only_during_a_call(
        monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(cupy.cuda, "Device", lambda index: recorder.context(f"device {index}"))
    monkeypatch.setattr(_to_core, "_cuda_stream",
                        lambda index: recorder.context(f"stream of device {index}"))
    outside = cupy.cuda.get_allocator()
    with _to_core._on_device(torch.device("cuda", 3), torch.float32):
        inside = cupy.cuda.get_allocator()
        recorder.log.append(("allocator", getattr(inside, "device_index", None)))
    assert recorder.log == [("enter", "device 3"), ("enter", "stream of device 3"),
                            ("allocator", 3), ("exit", "stream of device 3"),
                            ("exit", "device 3")]
    assert cupy.cuda.get_allocator() is outside
    with _to_core._on_device(torch.device("cpu"), torch.float32):
        assert cupy.cuda.get_allocator() is outside


@pytest.mark.parametrize("dtype, array_dtype", [(torch.float32, cupy.float32),
                                                (torch.float16, cupy.float16),
                                                (torch.bfloat16, cupy.int16)])
def test_outputs_come_back_as_the_tensors_that_own_their_blocks(dtype, array_dtype):
    empty = FakeEmpty()
    with cupy.cuda.using_allocator(_allocator.torch_allocator(0, empty=empty)):
        array = cupy.empty((2, 3), array_dtype)
    tensor = _to_core.to_tensor(array, dtype)
    assert tensor.dtype == dtype and tensor.shape == (2, 3) and tensor.is_contiguous()
    assert tensor.data_ptr() == array.data.ptr
    del array
    gc.collect()
    assert empty.released == []  # the tensor owns the block now
    del tensor
    gc.collect()
    assert len(empty.released) == 1


def test_only_an_exact_block_is_taken_over():
    empty = FakeEmpty()
    with cupy.cuda.using_allocator(_allocator.torch_allocator(0, empty=empty)):
        array = cupy.empty((4, 3), cupy.float32)
    assert _allocator.owning_tensor(array[1:]) is None  # part of a block
    assert _allocator.owning_tensor(array[:, ::2]) is None  # not contiguous
    assert _allocator.owning_tensor(array).data_ptr() == array.data.ptr
    foreign = cupy.cuda.UnownedMemory(array.data.ptr, array.nbytes, array, 0)
    other = cupy.ndarray(array.shape, array.dtype, cupy.cuda.MemoryPointer(foreign, 0))
    assert _allocator.owning_tensor(other) is None  # not a torch block


# --- GPU -----------------------------------------------------------------------------------


def _cuda():
    if NO_GPU is not None:
        pytest.skip(NO_GPU)
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA device")


def _conv_inputs(device, dtype=torch.float32, batch=4, channels=64, size=40):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=generator)
    offset = torch.randn(batch, 18, size, size, generator=generator)
    weight = torch.randn(channels, channels, 3, 3, generator=generator) / 24
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, offset, weight)]


@pytest.mark.gpu
def test_torch_counts_cudeform_memory_and_cupys_pool_stays_empty():
    _cuda()
    from cudeform.adapters.torch import deform_conv2d

    x, offset, weight = _conv_inputs("cuda")
    pool = cupy.get_default_memory_pool()
    torch.cuda.synchronize()
    pool.free_all_blocks()
    held_before = pool.total_bytes()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = deform_conv2d(x, offset, weight, padding=1)
    y.sum().backward()
    torch.cuda.synchronize()
    # The columns of one image alone: C_in * 9 taps * H * W float32 values.
    columns = 64 * 9 * 40 * 40 * 4
    assert torch.cuda.max_memory_allocated() - base >= y.nbytes + columns
    assert pool.total_bytes() == held_before, "cudeform allocated from CuPy's pool"
    assert y.untyped_storage().data_ptr() == y.data_ptr()
    y.record_stream(torch.cuda.Stream())  # torch-owned storage takes a stream record


@pytest.mark.gpu
def test_plain_cupy_calls_keep_cupys_pool():
    _cuda()
    import cudeform

    rng = numpy.random.default_rng(0)
    x = cupy.asarray(rng.standard_normal((1, 4, 6, 6)), cupy.float32)
    offset = cupy.zeros((1, 18, 4, 4), cupy.float32)
    weight = cupy.asarray(rng.standard_normal((2, 4, 3, 3)), cupy.float32)
    pool = cupy.get_default_memory_pool()
    used_before = pool.used_bytes()
    y = cudeform.deform_conv2d(x, offset, weight)
    assert pool.used_bytes() >= used_before + y.nbytes
    assert not isinstance(y.data.mem, _allocator.block_class())
