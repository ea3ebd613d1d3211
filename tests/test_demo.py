"""``python -m cudeform demo``: its task, its sampling-point walk, its networks, and a tiny run."""

import pathlib
import shutil
import subprocess

import numpy
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import cudeform._demo as demo  # noqa: E402
from cudeform._demo import nets, sampling  # noqa: E402
from cudeform._demo.shapes import ASPECT_RATIOS, make_shapes  # noqa: E402


def test_shapes_are_seeded_and_in_range():
    first = make_shapes(64, numpy.random.default_rng(5))
    again = make_shapes(64, numpy.random.default_rng(5))
    numpy.testing.assert_array_equal(first.images, again.images)
    assert first.images.shape == (64, 1, 32, 32) and first.images.dtype == numpy.float32
    assert set(first.labels) <= set(range(6))
    assert (first.length >= 10).all() and (first.length <= 30).all()


def test_each_shape_has_its_labelled_aspect_ratio_centre_and_size():
    # The ink's second moments give the aspect ratio (ratio of the standard deviations
    # along the principal axes) for ellipses and rectangles alike.
    shapes = make_shapes(64, numpy.random.default_rng(1), size=48, min_length=20,
                         max_length=24, noise=0)
    inside = [i for i, image in enumerate(shapes.images[:, 0])
              if not (image[[0, -1]].any() or image[:, [0, -1]].any())]  # not cut by the border
    assert len(inside) >= 32
    y, x = numpy.mgrid[:48, :48]
    for i in inside:
        image, label = shapes.images[i, 0], shapes.labels[i]
        centre, length = shapes.centre[i], shapes.length[i]
        ink = image / image.sum()
        mean = numpy.array([(ink * y).sum(), (ink * x).sum()])
        numpy.testing.assert_allclose(mean, centre, atol=0.05)
        d = numpy.stack([y - mean[0], x - mean[1]]).reshape(2, -1)
        moments = (d * ink.reshape(-1)) @ d.T
        small, large = numpy.linalg.eigvalsh(moments)
        ratio = ASPECT_RATIOS[label % 3]
        assert numpy.sqrt(large / small) == pytest.approx(ratio, rel=0.06)
        short = length / ratio
        area = numpy.pi / 4 * length * short if label < 3 else length * short
        assert image.sum() == pytest.approx(area, rel=0.03)


def _layers(count=2):
    return [nets.DeformConv2dPack(4, 4, 3, padding=1) for _ in range(count)]


def test_zero_offsets_give_the_regular_grid():
    offsets = [numpy.zeros((1, 18, 8, 8))] * 2
    points = sampling.sampling_points(_layers(), offsets, [(3, 4)], feature_stride=2)
    taps = [-1, 0, 1]
    expected = {(2 * (3 + a + b), 2 * (4 + c + d)) for a in taps for b in taps for c in taps
                for d in taps}
    assert points.shape == (1, 81, 2)
    assert {tuple(p) for p in points[0]} == expected
    assert sampling.spread(points)[0] == pytest.approx(2 * numpy.sqrt(2 * 4 / 3))


def test_offsets_are_read_where_each_point_lands():
    # Linear offset fields (dy = 0.1*x, dx = 0.05*y + 0.2): bilinear reading is exact
    # inside the map, so the walk can be written out by hand.
    height = width = 12
    yy, xx = numpy.mgrid[:height, :width].astype(float)
    field = numpy.zeros((1, 18, height, width))
    field[0, 0::2] = 0.1 * xx
    field[0, 1::2] = 0.05 * yy + 0.2
    unit = (5, 6)
    points = sampling.sampling_points(_layers(), [field, field], [unit], feature_stride=1)[0]

    def step(y, x):  # one 3x3 layer: taps plus the offset read at (y, x)
        return [(y + i + 0.1 * x, x + j + 0.05 * y + 0.2) for i in (-1, 0, 1) for j in (-1, 0, 1)]

    expected = [q for p in step(*unit) for q in step(*p)]
    numpy.testing.assert_allclose(points, expected, atol=1e-12)


def test_both_networks_start_as_the_same_function():
    torch.manual_seed(0)
    plain, deformable = nets.plain_and_deformable(6)
    images = torch.from_numpy(make_shapes(8, numpy.random.default_rng(2)).images)
    plain.eval()
    deformable.eval()
    with torch.no_grad():
        torch.testing.assert_close(deformable(images), plain(images), rtol=1e-5, atol=1e-5)
    deformable.train()
    loss = deformable(images).square().sum()
    loss.backward()
    assert deformable.conv4.conv_offset.weight.grad.abs().sum() > 0


def test_a_tiny_run_prints_both_accuracies_and_writes_the_picture(tmp_path, capsys):
    # A path without an extension: the PNG goes to exactly that path, the one printed.
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "noext"
    status = demo.main(["--steps", "2", "--batch-size", "8", "--test-size", "16",
                        "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert "plain CNN       test accuracy" in printed
    assert "deformable CNN  test accuracy" in printed
    assert f"Wrote {out}. Total time" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["noext"]


def test_the_default_picture_is_ignored_by_git():
    root = pathlib.Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    default = demo._parser().get_default("out")
    for folder in ("", "examples/"):  # the demo writes it wherever it runs
        ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", folder + default],
                                 cwd=root)
        assert ignored.returncode == 0, f"{folder + default} is not in .gitignore"


def test_panel_labels_count_the_distinct_positions():
    from cudeform._demo.figure import points_label

    # Two stacked 3x3 layers with dilation 1 sample 81 points on 25 positions.
    grid = numpy.array([(a + c, b + d) for a in (-1, 0, 1) for b in (-1, 0, 1)
                        for c in (-1, 0, 1) for d in (-1, 0, 1)], dtype=float)
    assert points_label(grid) == "81 sampling points (25 distinct positions)"
    spread_out = grid + numpy.random.default_rng(0).uniform(-0.3, 0.3, grid.shape)
    assert points_label(spread_out) == "81 sampling points"
