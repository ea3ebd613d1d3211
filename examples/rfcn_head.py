"""The R-FCN head of Deformable ConvNets on NumPy arrays: position-sensitive score maps,
offsets through ``deform_psroi_pool``, and the class vote.

In R-FCN a 1x1 convolution turns the backbone's features into ``k*k*classes``
position-sensitive score maps: the map of class ``c`` and cell ``(i, j)`` of a k x k
grid is high where the ``(i, j)`` part of an object of class ``c`` lies. Pooling a RoI
reads, for each of its k x k bins, the map of that bin's own cell, and the class scores
are the vote (the mean) over the bins. Deformable ConvNets adds a second 1x1
convolution whose ``2*k*k*classes`` maps, pooled without offsets, give a normalised
``(dx, dy)`` per RoI, class and bin; the deformable pooling of the score maps moves
every bin by that much times ``trans_std`` and the RoI's size.

Here the score maps are drawn by hand, as a trained network would give them for three
squares (one of class 1, two of class 2; class 0 is the background), and so are the
offset maps, as a trained offset branch would give them for a proposal that is off by a
quarter of its square. The script checks that

1. the vote picks the right class for the well-placed RoIs and for the background;
2. the misplaced proposal, pooled without offsets, loses most of its score;
3. with the offsets from the offset branch it gets the well-placed RoI's scores back;
4. the gradient of its class score with respect to the offsets points back towards
   the object, so training would learn those offsets.

Run it with ``python examples/rfcn_head.py``; it needs only NumPy and cudeform.
"""

from __future__ import annotations

import numpy as np

import cudeform

K = 3  # k x k bins and position-sensitive cells
CLASSES = 3  # background, class 1, class 2
STRIDE = 4  # image pixels per feature pixel
MAP_SIZE = 24  # the feature map is 24 x 24 (a 96 x 96 image)
TRANS_STD = 0.1
# (class, (x1, y1, x2, y2) in image pixels) of each square
SQUARES = ((1, (8, 8, 31, 31)), (2, (52, 8, 75, 31)), (2, (52, 56, 75, 79)))
SHIFT = 6  # the misplaced proposal is this many image pixels right of the third square
POOLING = dict(group_size=K, pooled_size=K, spatial_scale=1 / STRIDE, sample_per_part=4)


def score_maps():
    """``(1, classes*k*k, H, W)`` maps: channel ``(c*k + i)*k + j`` is 1 on the ``(i, j)``
    cell of each square of class ``c``; the background maps are 0.3 everywhere."""
    maps = np.zeros((CLASSES, K, K, MAP_SIZE, MAP_SIZE), np.float32)
    maps[0] = 0.3
    for label, (x1, y1, x2, y2) in SQUARES:
        cell = (x2 + 1 - x1) // STRIDE // K  # feature pixels per cell
        fx, fy = x1 // STRIDE, y1 // STRIDE
        for i in range(K):
            for j in range(K):
                maps[label, i, j, fy + i * cell:fy + (i + 1) * cell,
                     fx + j * cell:fx + (j + 1) * cell] = 1.0
    return maps.reshape(1, -1, MAP_SIZE, MAP_SIZE)


def offset_maps(misplaced):
    """``(1, 2*classes*k*k, H, W)`` maps that pool to ``dx`` (normalised) for every class
    and bin over the misplaced proposal ``(x1, y1, x2, y2)``, and to 0 elsewhere."""
    x1, y1, x2, y2 = misplaced
    # A bin moves by offset * trans_std * roi_w, with roi_w = (x2 + 1 - x1) / STRIDE
    # feature pixels; moving it SHIFT image pixels left takes this offset.
    dx = -SHIFT / (TRANS_STD * (x2 + 1 - x1))
    maps = np.zeros((CLASSES, 2, K, K, MAP_SIZE, MAP_SIZE), np.float32)
    margin = 2  # the field reaches a little past the RoI, where its samples land
    maps[:, 0, :, :, max(0, y1 // STRIDE - margin):(y2 + 1) // STRIDE + margin,
         max(0, x1 // STRIDE - margin):(x2 + 1) // STRIDE + margin] = dx
    return maps.reshape(1, -1, MAP_SIZE, MAP_SIZE), dx


def vote(pooled):
    """Class scores ``(R, classes)``: the mean over the bins, then a softmax."""
    scores = pooled.mean(axis=(2, 3))
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)


def check(condition, message):
    if not condition:
        raise RuntimeError(message)
    print(message)


def main():
    x1, y1, x2, y2 = third = SQUARES[2][1]
    misplaced = (x1 + SHIFT, y1, x2 + SHIFT, y2)
    rois = np.array([[0, *SQUARES[0][1]], [0, *SQUARES[1][1]], [0, 4, 60, 27, 83],
                     [0, *misplaced]], np.float32)
    names = ["square 1", "square 2", "background", "square 3, misplaced"]
    scores = score_maps()
    well_placed = cudeform.deform_psroi_pool(scores, np.array([[0, *third]], np.float32),
                                             output_dim=CLASSES, **POOLING)[0]

    plain = cudeform.deform_psroi_pool(scores, rois, output_dim=CLASSES, **POOLING)
    plain_votes = vote(plain)
    for name, row in zip(names, plain_votes):
        print(f"{name:20s} without offsets: class scores {np.round(row, 3)}")
    check(list(plain_votes[:3].argmax(axis=1)) == [1, 2, 0],
          "the vote picks class 1, class 2 and the background for the well-placed RoIs")
    aligned, shifted = well_placed[2].mean(), plain[3, 2].mean()
    check(shifted < 0.8 * aligned,
          f"the misplaced proposal keeps {shifted / aligned:.0%} of the class-2 evidence")

    # The offset branch: its maps, pooled without offsets, give (R, 2*classes, k, k).
    maps, dx = offset_maps(misplaced)
    offset = cudeform.deform_psroi_pool(maps, rois, output_dim=2 * CLASSES, **POOLING)
    check(np.allclose(offset[3, 0::2], dx) and np.allclose(offset[:3], 0),
          f"the offset branch gives dx = {dx:.3f} for every bin of the misplaced proposal "
          f"and 0 for the others")
    deformable = cudeform.deform_psroi_pool(scores, rois, offset, output_dim=CLASSES,
                                            part_size=K, trans_std=TRANS_STD, **POOLING)
    print(f"{names[3]:20s} with offsets:    class scores {np.round(vote(deformable)[3], 3)}")
    check(np.allclose(deformable[3], well_placed, atol=1e-6)
          and np.allclose(deformable[:3], plain[:3]),
          "with its offsets the misplaced proposal pools what a well-placed RoI on the "
          "third square pools, and the other RoIs are unchanged")

    # How training finds the offsets: the gradient of the misplaced proposal's class-2
    # score (the mean of its class-2 bins) with respect to zero offsets.
    grad_output = np.zeros_like(plain)
    grad_output[3, 2] = 1 / K**2
    zero = np.zeros_like(offset)
    grads = cudeform.deform_psroi_pool_backward(grad_output, scores, rois, zero,
                                                output_dim=CLASSES, part_size=K,
                                                trans_std=TRANS_STD, **POOLING)
    grad_dx = grads.offset[3, 2 * 2]  # dx of class 2, per bin
    check(grad_dx.sum() < 0 and np.all(grads.offset[:3] == 0),
          f"d(score)/d(dx) summed over the bins is {grad_dx.sum():.3f}: raising the score "
          f"moves the bins left, towards the square")


if __name__ == "__main__":
    main()
