"""Lets Chainer 7.8.1, the last release, import under NumPy 2.

Chainer reads ``numpy.sctypes`` when it is imported
(``chainer/functions/array/as_strided.py``: ``numpy.sctypes['int']`` and
``numpy.sctypes['float']``), and NumPy 2.0 removed that attribute. Importing this
module before ``import chainer`` defines it again, with NumPy 1's contents, when it
is missing; under NumPy 1 it changes nothing. It has no other effect.

Chainer also imports ``pkg_resources`` at run time, which setuptools 81 removed, so
``setuptools<81`` must be installed next to it (the ``chainer`` extra says so).
"""

from __future__ import annotations

import numpy

if "sctypes" not in numpy.__dict__:
    numpy.sctypes = {
        "int": [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
        "uint": [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
        "float": [numpy.float16, numpy.float32, numpy.float64, numpy.longdouble],
        "complex": [numpy.complex64, numpy.complex128, numpy.clongdouble],
        "others": [bool, object, bytes, str, numpy.void],
    }
