"""Framework adapters (PyTorch, Chainer), installed as ``cudeform.adapters``."""
