"""The demo's picture: where one unit samples, plain grid above and learned points below,
and, on the right, how far the learned points spread against the shape's size."""

from __future__ import annotations

import numpy

from cudeform._demo.sampling import spread

_POINT = "#e8412c"
_UNIT = "#35d14f"
_RADIUS = "#f2c12e"


def points_label(points):
    """What a panel shows of ``points`` ``(m, 2)``: their count and, when some coincide,
    how many distinct positions are visible, e.g. "81 sampling points (25 distinct
    positions)" for the regular grid of two stacked 3x3 layers."""
    distinct = len(numpy.unique(numpy.round(points, 6), axis=0))
    label = f"{len(points)} sampling points"
    return label if distinct == len(points) else f"{label} ({distinct} distinct positions)"


def _panel(ax, image, unit, points):
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.scatter(points[:, 1], points[:, 0], s=9, c=_POINT, alpha=0.75, linewidths=0)
    ax.scatter(unit[1], unit[0], s=70, marker="*", c=_UNIT, edgecolors="black", linewidths=0.5)
    radius = spread(points[None])[0]
    centre_y, centre_x = points.mean(axis=0)
    ax.add_patch(_circle((centre_x, centre_y), radius))
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{points_label(points)}\nRMS radius {radius:.1f} px", fontsize=7)


def _circle(centre, radius):
    from matplotlib.patches import Circle

    return Circle(centre, radius, fill=False, ls="--", lw=1, ec=_RADIUS)


def draw(path, examples, titles, units, plain_points, deformable_points, lengths, spreads,
         plain_spread):
    """Write the PNG to exactly ``path``, whatever its extension (none included).

    Args:
        examples: ``(k, H, W)`` images, one column each.
        titles: ``k`` column titles.
        units: ``(k, 2)`` the unit's (y, x) image position in each example.
        plain_points, deformable_points: ``(k, m, 2)`` (y, x) sampling points.
        lengths, spreads: every test shape's long side and the RMS radius of the
            deformable unit's points, for the scatter plot.
        plain_spread: the regular grid's RMS radius.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(examples)
    figure = Figure(figsize=(2.5 * k + 3.6, 5.8), dpi=110)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, k + 1, width_ratios=[1] * k + [1.45], wspace=0.12,
                               hspace=0.28)
    rows = (("plain CNN: regular grid", plain_points),
            ("deformable CNN: learned points", deformable_points))
    for row, (label, points) in enumerate(rows):
        for column in range(k):
            ax = figure.add_subplot(grid[row, column])
            _panel(ax, examples[column], units[column], points[column])
            if row == 0:
                ax.set_title(titles[column], fontsize=9)
            if column == 0:
                ax.set_ylabel(label, fontsize=9)

    ax = figure.add_subplot(grid[:, k])
    ax.scatter(lengths, spreads, s=5, c=_POINT, alpha=0.5, linewidths=0,
               label="deformable, one dot per test image")
    ax.axhline(plain_spread, color="black", lw=1, ls="--", label="plain (regular grid)")
    r = numpy.corrcoef(lengths, spreads)[0, 1]
    ax.set_title(f"RMS radius of the {plain_points.shape[1]} points\nagainst shape size "
                 f"(r = {r:.2f})", fontsize=9)
    ax.set_xlabel("long side of the shape (px)", fontsize=8)
    ax.set_ylabel("RMS radius of the sampling points (px)", fontsize=8)
    ax.yaxis.set_label_position("right")  # clear of the image panels
    ax.yaxis.tick_right()
    ax.tick_params(labelsize=8)
    ax.set_ylim(0, None)
    ax.legend(fontsize=7, loc="lower right")
    figure.suptitle("Where one unit of conv4 (green star) looks: the sampling points of "
                    "conv3 + conv4 (red; coinciding points overlap), with their RMS radius "
                    "(dashed)", fontsize=10)
    figure.subplots_adjust(left=0.04, right=0.955, top=0.88, bottom=0.07)
    figure.savefig(path, format="png")  # without it, a path with no extension gains ".png"
