"""Host run of the CUDA kernel source: the shim header and the ctypes loader."""
