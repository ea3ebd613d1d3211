"""Scatter-add done as a gather: weighted sums of rows, grouped by a key.

``target[key[i]] += weight[i] * source[row[i]]`` with repeated keys is the adjoint
of a gather, and NumPy has no fast primitive for it: ``numpy.add.at`` and
``numpy.add.reduceat`` over rows call their inner loop once per element or per
(segment, column). Here the elements are sorted by key once, laid out ``SLOTS``
to a piece (padding slots read a zero row with weight 0), and one ``take``
gathers the rows of every piece while one batched ``matmul`` applies the
weights. A key with more than ``SLOTS`` elements spans several pieces, added
to its first one in a few passes (or, for very many, summed by the same
procedure). The layout, and so the order of every sum,
depends only on the keys: results are reproducible.
"""

from __future__ import annotations

import dataclasses

import numpy

SLOTS = 8
# Keys with up to this many extra pieces have them added one pass each; beyond, the
# pieces are summed recursively (a key hit by very many elements).
_EXTRA_PASSES = 8


def _sorted_by_key(keys):
    """``(sorted keys, element order)``, ties in element order.

    Sorting ``key * m + i`` (unique values) is several times faster than a stable
    ``argsort``; it is used whenever those values fit in 63 bits.
    """
    m = keys.size
    if int(keys.max()) < (2**62) // m:
        sorted_keys, order = numpy.divmod(numpy.sort(keys * m + numpy.arange(m)), m)
        return sorted_keys, order
    order = numpy.argsort(keys, kind="stable")
    return keys[order], order


def _segments(keys):
    """``(sorted keys, element order, first-of-segment flags, segment starts)``."""
    sorted_keys, order = _sorted_by_key(keys)
    first = numpy.empty(keys.size, dtype=bool)
    first[0] = True
    numpy.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    return sorted_keys, order, first, numpy.flatnonzero(first)


def merge_by_key(keys, values):
    """``(unique, sums)``: the distinct keys in ascending order and, for each, the sum of
    the rows of ``values (m, j)`` with that key, added in element order."""
    if keys.size == 0:
        return keys[:0].astype(numpy.int64), values[:0]
    sorted_keys, order, _, starts = _segments(keys)
    sums = numpy.empty((starts.size, values.shape[1]), dtype=values.dtype)
    for column in range(values.shape[1]):  # 1-D reduceat: one inner loop per segment
        sums[:, column] = numpy.add.reduceat(values[order, column], starts)
    return sorted_keys[starts], sums


@dataclasses.dataclass
class _Pieces:
    """Elements sorted by key, ``SLOTS`` to a piece. Piece k of a key holds its
    elements k*SLOTS.. in order; the first pieces of all keys come first (piece =
    the key's index), then the extra pieces."""

    unique: numpy.ndarray       # the distinct keys, ascending
    order: numpy.ndarray        # the elements in sorted order
    place: numpy.ndarray        # slot of each sorted element, piece * SLOTS + slot
    count: int                  # keys (and first pieces)
    pieces: int
    extra: numpy.ndarray        # extra pieces of each key
    extra_start: numpy.ndarray  # first extra piece of each key

    def key_of_pieces(self):
        """Index (into ``unique``) of the key of every piece."""
        keys = numpy.arange(self.count)
        return numpy.concatenate([keys, numpy.repeat(keys, self.extra)])

    def gather(self, sources, rows):
        """``(pieces, SLOTS, w)``: the source rows of the elements, the zero row
        (the last one of ``sources``) in empty slots."""
        index = numpy.full(self.pieces * SLOTS, sources.shape[0] - 1, dtype=numpy.intp)
        index[self.place] = rows[self.order]
        # Indices are in bounds by construction; mode="clip" skips the bounds check.
        return numpy.take(sources, index, axis=0, mode="clip").reshape(self.pieces, SLOTS, -1)


def _pieces(keys):
    m = keys.size
    sorted_keys, order, first, starts = _segments(keys)
    count = starts.size
    segment = numpy.cumsum(first) - 1
    rank = numpy.arange(m) - starts[segment]
    extra = -(-numpy.diff(starts, append=m) // SLOTS) - 1
    extra_start = count + numpy.cumsum(extra) - extra
    chunk = rank // SLOTS
    piece = numpy.where(chunk == 0, segment, extra_start[segment] + chunk - 1)
    return _Pieces(sorted_keys[starts], order, piece * SLOTS + rank % SLOTS, count,
                   count + int(extra.sum()), extra, extra_start)


def sums_by_key(keys, sources, rows, weights):
    """Weighted sums of source rows, one per distinct key.

    Args:
        keys (ndarray[m], int): the group of each element, >= 0.
        sources (ndarray[n + 1, w]): the rows; the last one must be zero.
        rows (ndarray[m], int): the source row of each element (< n).
        weights (ndarray[m, j]): ``j`` weights per element.

    Returns:
        ``(unique, sums)``: the distinct keys in ascending order, and
        ``sums (ndarray[u, j, w])`` with ``sums[k] = sum over i with keys[i] ==
        unique[k] of weights[i][:, None] * sources[rows[i]]``.
    """
    j, w = weights.shape[1], sources.shape[1]
    if keys.size == 0:
        return keys[:0].astype(numpy.int64), numpy.zeros((0, j, w), sources.dtype)
    layout = _pieces(keys)
    pieces, count, extra = layout.pieces, layout.count, layout.extra
    piece_weights = numpy.zeros((pieces * SLOTS, j), dtype=sources.dtype)
    piece_weights[layout.place] = weights[layout.order]
    # One extra zero row, so that the pieces can be summed as sources in turn.
    piece_sums = numpy.empty((pieces + 1, j, w), dtype=sources.dtype)
    piece_sums[-1] = 0
    numpy.matmul(piece_weights.reshape(pieces, SLOTS, j).transpose(0, 2, 1),
                 layout.gather(sources, rows), out=piece_sums[:-1])
    sums, most = piece_sums[:count], int(extra.max())
    if most <= _EXTRA_PASSES:
        for k in range(most):  # each pass adds one extra piece of every key that has one
            more = numpy.flatnonzero(extra > k)
            sums[more] += piece_sums[layout.extra_start[more] + k]
        return layout.unique, sums
    piece_keys = layout.unique[layout.key_of_pieces()]
    _, sums = sums_by_key(piece_keys, piece_sums.reshape(pieces + 1, -1), numpy.arange(pieces),
                          numpy.ones((pieces, 1), dtype=sources.dtype))
    return layout.unique, sums.reshape(-1, j, w)


def dots_by_key(keys, sources, rows, vectors):
    """``dots[i] = sources[rows[i]] . vectors[keys[i]]`` for every element.

    The elements of a key share its vector: laid out as in :func:`sums_by_key`,
    each piece is one matrix-vector product, and no product row is stored.
    ``sources`` must end with a zero row, as there.
    """
    if keys.size == 0:
        return numpy.zeros(0, sources.dtype)
    layout = _pieces(keys)
    piece_vectors = numpy.take(vectors, layout.unique[layout.key_of_pieces()], axis=0)
    piece_dots = numpy.matmul(layout.gather(sources, rows), piece_vectors[:, :, None])
    dots = numpy.empty(keys.size, dtype=sources.dtype)
    dots[layout.order] = piece_dots.reshape(-1)[layout.place]
    return dots
