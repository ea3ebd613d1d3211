// Stand-in for CUDA's <cuda_bf16.h> in the block emulator's host build: the emulation itself
// (block_wmma.h, host_16bit.h) is joined into the source ahead of the kernels, so
// that the build cache hashes it; this file only lets `#include <cuda_bf16.h>` resolve.
