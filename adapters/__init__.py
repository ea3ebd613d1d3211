"""Framework adapters (PyTorch, Chainer), installed as ``cudeform.adapters``.

Importing them first checks that ``cudeform`` is the package: run from the folder
that holds a source checkout named ``cudeform``, Python imports that folder as a
namespace package instead, and every adapter would fail with an ``AttributeError``
deep inside it.
"""

import cudeform as _cudeform

if getattr(_cudeform, "__file__", None) is None:  # a namespace package: no __init__.py
    _folder = ", ".join(getattr(_cudeform, "__path__", []))
    raise ImportError(
        f"cudeform was imported from the folder {_folder}, which is not the cudeform "
        f"package: it has no __init__.py, so Python took it for a namespace package. It is "
        f"probably the source checkout, found in the current folder, and it shadows the "
        f"installed package. Run Python from another folder (inside the checkout works), "
        f"or take that folder off sys.path.")
