"""CUDA path: kernel sources, compilation, launches and the host logic around them."""
