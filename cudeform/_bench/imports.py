"""Optional imports: every peer framework is imported only when the bench runs,
and a missing or broken one becomes a reason to skip that peer."""

from __future__ import annotations

import importlib
import warnings


class Missing(Exception):
    """A peer's framework cannot be imported (the message says why)."""


def optional(name):
    """``import name``, or raise :class:`Missing` saying why not. Import-time warnings
    (CuPy without NCCL, Chainer's pkg_resources) are silenced: they are not results."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except ImportError as error:
        raise Missing(f"not installed: {error}") from error
    except Exception as error:  # a broken install fails in many ways
        raise Missing(f"fails to import: {type(error).__name__}: {error}") from error


def chainer_modules():
    """``(chainer, cudeform.adapters.chainer)``; the adapter restores ``numpy.sctypes``
    for NumPy 2 before Chainer is imported."""
    optional("cudeform.adapters._chainer_compat")
    chainer = optional("chainer")
    optional("chainer.functions")
    return chainer, optional("cudeform.adapters.chainer")


def load_peers(loaders):
    """``(peers, missing)`` from ``(name, loader)`` pairs: the peers that loaded, and
    ``(name, reason)`` for those that raised :class:`Missing`."""
    peers, missing = [], []
    for name, loader in loaders:
        try:
            peers.append(loader())
        except Missing as reason:
            missing.append((name, str(reason)))
    return peers, missing
