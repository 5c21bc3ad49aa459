"""Tests for explainer.visualize (numpy + Pillow, no torch)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explainer import colormaps, visualize
from explainer.visualize import COLORMAPS, colormap, figure, overlay, save_figure


def _ramp(h: int = 8, w: int = 16) -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, w), (h, 1))


def _image(h: int = 32, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("module", [visualize, colormaps])
def test_module_is_torch_and_matplotlib_free(module):
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "logging", "collections", "os", "pathlib", "numpy", "PIL", "errors",
               "colormaps"}
    assert imported <= allowed


@pytest.mark.parametrize("name", COLORMAPS)
def test_colormap_shape_and_dtype(name):
    out = colormap(_ramp(), name)
    assert out.shape == (8, 16, 3)
    assert out.dtype == np.uint8


def test_jet_endpoints_and_middle():
    out = colormap(np.array([[0.0, 0.5, 1.0]]), "jet")[0]
    assert tuple(out[0]) == (0, 0, 128)  # dark blue
    assert tuple(out[2]) == (128, 0, 0)  # dark red
    r, g, b = out[1]
    assert g == 255 and abs(int(r) - int(b)) < 40  # green-ish middle


def test_jet_matches_matplotlib_if_available():
    cm = pytest.importorskip("matplotlib").colormaps
    values = np.linspace(0, 1, 256)[None, :]
    for name, tol in [("jet", 2), ("viridis", 8), ("inferno", 8), ("turbo", 8)]:
        ref = np.rint(cm[name](values)[..., :3] * 255).astype(int)
        ours = colormap(values, name).astype(int)
        assert np.abs(ref - ours).max() <= tol, name


def test_gray_is_identity_ramp():
    out = colormap(np.array([[0.0, 1.0]]), "gray")
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [255, 255, 255]])


def test_values_outside_unit_interval_are_clipped():
    np.testing.assert_array_equal(
        colormap(np.array([[-3.0, 7.0]])), colormap(np.array([[0.0, 1.0]]))
    )


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 2, 2)), np.zeros((0, 3))])
def test_colormap_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="shape"):
        colormap(bad)


def test_colormap_rejects_nan_and_unknown_name():
    with pytest.raises(ValueError, match="NaN"):
        colormap(np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match="unknown colormap 'rainbow'"):
        colormap(_ramp(), "rainbow")


def test_overlay_alpha_extremes_and_size():
    img = _image()
    hm = np.full((32, 48), 1.0)
    out0 = overlay(img, hm, alpha=0.0)
    assert isinstance(out0, Image.Image) and out0.mode == "RGB" and out0.size == (48, 32)
    np.testing.assert_array_equal(np.asarray(out0), img)
    out1 = overlay(img, hm, alpha=1.0)
    np.testing.assert_array_equal(np.asarray(out1), colormap(hm))


def test_overlay_blends_halfway():
    img = np.zeros((4, 4, 3), np.uint8)
    out = np.asarray(overlay(img, np.ones((4, 4)), alpha=0.5))
    np.testing.assert_array_equal(out[0, 0], [64, 0, 0])  # half of jet(1) = (128, 0, 0)


def test_overlay_resizes_heatmap_bilinearly():
    img = _image(64, 96)
    hm = np.zeros((7, 7))
    hm[3, 3] = 1.0
    out = np.asarray(overlay(Image.fromarray(img), hm, alpha=1.0)).astype(int)
    assert out.shape == (64, 96, 3)
    # hottest (reddest) pixel near the centre, cold (blue) corners
    red = out[..., 0] - out[..., 2]
    cy, cx = np.unravel_index(np.argmax(red), red.shape)
    assert abs(cy - 32) <= 5 and abs(cx - 48) <= 7
    assert red[0, 0] < 0


def test_overlay_accepts_pil_modes_and_gray_arrays():
    gray = np.full((10, 12), 200, np.uint8)
    assert overlay(gray, np.zeros((10, 12))).size == (12, 10)
    rgba = Image.new("RGBA", (12, 10), (10, 20, 30, 40))
    assert overlay(rgba, np.zeros((5, 6))).mode == "RGB"
    assert overlay(np.zeros((10, 12, 4), np.uint8), np.zeros((5, 6))).size == (12, 10)


def test_overlay_validation():
    img = _image()
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, _ramp(), alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(img.astype(np.float32), _ramp())
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        overlay(np.zeros((4, 4, 2), np.uint8), _ramp())
    with pytest.raises(ValueError, match="2-D"):
        overlay(img, np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="PIL"):
        overlay([[1, 2]], _ramp())


def test_figure_layout():
    img = _image(40, 40)
    maps = [_ramp(7, 7), _ramp(7, 7).T, np.zeros((7, 7))]
    fig = figure(img, maps, ["a", "b", "least: something 1e-6"], tile=64, padding=4)
    assert fig.mode == "RGB"
    assert fig.width == 4 * 64 + 5 * 4
    assert fig.height > 64
    arr = np.asarray(fig)
    strip = fig.height - 64 - 4
    # title strip has dark (text) pixels above the first tile
    assert (arr[:strip, 4 : 4 + 64] < 100).any()
    # the input tile is the image scaled to 64x64
    tile0 = arr[strip : strip + 64, 4 : 4 + 64]
    expected = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(tile0, expected)


def test_figure_accepts_3d_array_and_no_titles():
    fig = figure(_image(20, 30), np.zeros((2, 5, 5)), tile=32)
    assert fig.width == 3 * 32 + 4 * 4


def test_figure_non_square_image_is_letterboxed():
    fig = figure(_image(20, 40), [np.zeros((5, 5))], ["x"], tile=40, padding=0)
    arr = np.asarray(fig)
    top = fig.height - 40
    # rows above/below the 40x20 letterboxed image are white background
    assert (arr[top : top + 5, :40] == 255).all()


def test_figure_long_title_is_shortened():
    fig = figure(_image(), [np.zeros((4, 4))], ["x" * 500], tile=32)
    assert fig.width == 2 * 32 + 3 * 4


def test_figure_validation():
    img = _image()
    with pytest.raises(ValueError, match="2 heatmaps but 1 titles"):
        figure(img, [np.zeros((4, 4))] * 2, ["a"])
    with pytest.raises(ValueError, match="at least one"):
        figure(img, [], [])
    with pytest.raises(ValueError, match="wrap it in a list"):
        figure(img, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"heatmaps\[1\].*2-D"):
        figure(img, [np.zeros((4, 4)), np.zeros(4)], ["a", "b"])
    with pytest.raises(ValueError, match="tile"):
        figure(img, [np.zeros((4, 4))], tile=8)
    with pytest.raises(ValueError, match="single str"):
        figure(img, [np.zeros((4, 4))], "a")


def test_save_figure_creates_dirs(tmp_path):
    path = save_figure(tmp_path / "sub" / "fig.png", _image(), [_ramp()], ["ramp"], tile=32)
    assert path.is_file()
    with Image.open(path) as im:
        assert im.size[0] == 2 * 32 + 3 * 4


def test_pixel_image_scales_by_the_largest_magnitude_around_grey():
    from explainer.visualize import pixel_image

    g = np.zeros((3, 2, 4), np.float32)
    g[0, 0, 0], g[1, 0, 1], g[2, 1, 3] = 2.0, -2.0, 1.0
    img = pixel_image(g)
    assert img.mode == "RGB" and img.size == (4, 2)
    rgb = np.asarray(img)
    assert rgb[0, 0, 0] == 255 and rgb[0, 1, 1] == 0 and rgb[1, 3, 2] == 191  # one scale: 1 of 2
    assert rgb[1, 0].tolist() == [128, 128, 128]  # zero is mid grey
    assert np.asarray(pixel_image(np.zeros((3, 5, 5)))).tolist() == np.full((5, 5, 3), 128).tolist()
    grey = pixel_image(-np.ones((1, 3, 3)))
    assert grey.mode == "L" and np.asarray(grey).max() == 0
    assert pixel_image(np.ones((4, 3, 3))).mode == "L"  # other channel counts: averaged
    with pytest.raises(visualize.VisualizeError, match="shape"):
        pixel_image(np.zeros((3, 3)))
    with pytest.raises(visualize.VisualizeError, match="NaN"):
        pixel_image(np.full((3, 2, 2), np.nan))


def test_a_text_line_is_laid_out_in_a_column_of_wide_cells():
    from explainer.visualize import WIDE_ASPECT, figure

    line = np.full((20, 200, 3), 255, np.uint8)  # 10:1, a text line
    assert 200 / 20 >= WIDE_ASPECT
    maps = np.random.default_rng(0).random((3, 20, 200)).astype(np.float32)
    fig = figure(line, maps, ["a", "b", "c"], tile=32, padding=2)
    assert fig.width == 4 * 32 + 2 * 2  # one wide cell per row
    square = figure(np.full((40, 40, 3), 255, np.uint8), maps[:, :, :20].repeat(2, 1)[:, :40],
                    ["a", "b", "c"], tile=32, padding=2)
    assert square.width == 4 * 32 + 5 * 2 and fig.height > square.height
    # each row holds its own overlay: the rows differ where the maps differ
    rows = np.asarray(fig)[: fig.height - 2].reshape(4, -1, fig.width, 3)  # less the padding
    assert not np.array_equal(rows[1], rows[2])


def test_boxes_with_swapped_corners_or_no_finite_value_are_drawn_or_skipped():
    """A random-weight detector's box may have a negative width: drawn over its span, as the
    same box with its corners in order; a NaN box is skipped."""
    image = Image.new("RGB", (40, 30), (90, 90, 90))
    swapped = visualize.draw_boxes(image, [(30, 25, 5, 4)], ["1"])
    ordered = visualize.draw_boxes(image, [(5, 4, 30, 25)], ["1"])
    assert np.array_equal(np.asarray(swapped)[:, :, 0] == 255, np.asarray(ordered)[:, :, 0] == 255)
    assert (np.asarray(ordered) != 90).any()
    nan = visualize.draw_boxes(image, [(float("nan"), 0, 5, 5)], ["1"])
    assert np.array_equal(np.asarray(nan), np.asarray(image))
