"""NumPy path: vectorised reference implementations that run on the CPU."""
