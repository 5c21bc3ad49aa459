from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from explainer.image import (
    ImageError,
    Preprocessing,
    load_image,
    normalize_maps,
    prepare_image,
    preprocess,
    upsample_bilinear,
)
from explainer.layers import LayerMaps, fuse, heatmaps_of


def _photo(w: int = 320, h: int = 240) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_resize_shorter_side_then_center_crop():
    img = prepare_image(_photo(320, 240), Preprocessing(resize=256, crop=224))
    assert img.size == (224, 224)
    assert prepare_image(_photo(320, 240), Preprocessing(resize=256, crop=None)).size == (341, 256)


def test_preprocess_matches_manual_normalization():
    pre = Preprocessing(resize=(8, 8), crop=None)
    img = _photo(8, 8)
    x = preprocess(img, pre)
    manual = (np.asarray(img, np.float32) / 255 - np.array(pre.mean)) / np.array(pre.std)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], manual.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    nhwc = preprocess([img, img], Preprocessing(resize=(8, 8), crop=None, layout="NHWC"))
    assert nhwc.shape == (2, 8, 8, 3)


def test_preprocessing_round_trips_through_dict():
    pre = Preprocessing(resize=(224, 224), crop=None, scale=1.0, mean=(127.0,) * 3,
                        std=(128.0,) * 3)
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_image_errors(tmp_path):
    with pytest.raises(ImageError, match="no such image"):
        preprocess(tmp_path / "missing.png", Preprocessing())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        preprocess(bad, Preprocessing())
    with pytest.raises(ImageError, match="larger"):
        preprocess(_photo(100, 100), Preprocessing(resize=None, crop=224))
    with pytest.raises(ImageError, match="layout"):
        Preprocessing(layout="CHW")


def test_upsample_bilinear_matches_half_pixel_reference():
    maps = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    up = upsample_bilinear(maps, (6, 8))
    # half-pixel centers: output pixel (0, 1) samples source (-0.25 -> 0, 0.25)
    assert up.shape == (1, 6, 8)
    assert up[0, 0, 0] == pytest.approx(0.0)
    assert up[0, 0, 1] == pytest.approx(0.25)
    assert up[0, 1, 0] == pytest.approx(1.0)  # row 1 samples source row 0.25 -> 0.25 * 4
    np.testing.assert_allclose(upsample_bilinear(maps, (3, 4)), maps, atol=1e-6)


def test_normalize_maps_on_strided_input_leaves_it_alone():
    maps = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32).transpose(2, 0, 1)
    before = maps.copy()
    out = normalize_maps(maps)
    np.testing.assert_array_equal(maps, before)
    flat = out.reshape(6, -1)
    np.testing.assert_allclose(flat.min(1), 0, atol=1e-7)
    np.testing.assert_allclose(flat.max(1), 1, atol=1e-6)


def test_normalize_maps_per_map_and_constant_maps():
    maps = np.stack([np.arange(4, dtype=np.float32).reshape(2, 2), np.full((2, 2), 7.0)])
    out = normalize_maps(maps)
    np.testing.assert_allclose(out[0], [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0)


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (500, 375)])
def test_preprocess_equals_torchvision_transforms(size):
    transforms = pytest.importorskip("torchvision.transforms")
    img = _photo(*size)
    pipeline = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    expected = pipeline(img).numpy()
    np.testing.assert_allclose(preprocess(img, Preprocessing())[0], expected, atol=1e-5)


def test_normalize_maps_in_place():
    maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    out = normalize_maps(maps, copy=False)
    assert out is maps or np.shares_memory(out, maps)
    np.testing.assert_allclose(maps[0], [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)


@pytest.mark.parametrize(("cams_shape", "size"), [
    ((10, 20, 20), (640, 640)), ((3, 7, 5), (32, 48)), ((2, 13, 9), (13, 9)),
    ((2, 16, 16), (5, 7)), ((4, 3, 80), (24, 640)),
])
def test_heatmap_graph_equals_numpy(cams_shape, size):
    import onnxruntime as ort

    from explainer.maps import heatmap_feeds, heatmap_model
    cams = np.random.default_rng(0).standard_normal(cams_shape).astype(np.float32)
    session = ort.InferenceSession(heatmap_model().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, heatmap_feeds([cams], size))
    want = normalize_maps(upsample_bilinear(cams, size))
    assert got.shape == want.shape and got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(got, want, atol=2e-6)
    # heatmaps_of with it: the same maps; a constant one is zeros, not upsampled
    cams[1] = 0.25
    want[1] = 0
    calls = []
    def upsample(layers, s):
        return (calls.append(len(layers[0])) or session.run(
            None, heatmap_feeds(layers, s))[0])
    np.testing.assert_allclose(heatmaps_of([cams[None]], size, upsample)[0], want, atol=2e-6)
    assert calls == [len(cams) - 1]


@pytest.mark.parametrize(("heights", "height"), [
    ((80, 40, 20), 640), ((7,), 224), ((13, 11), 5), ((3, 6, 12), 17), ((60, 30, 15), 480),
])
def test_row_blocks_are_the_interpolation_matrices_side_by_side(heights, height):
    from explainer.maps import interpolation_matrix, row_blocks
    index, weights = row_blocks(heights, height)
    dense = np.concatenate([interpolation_matrix(h, height) for h in heights], axis=1)
    rebuilt = np.zeros((len(index), weights.shape[1], dense.shape[1]), np.float32)
    for b in range(len(index)):
        np.add.at(rebuilt[b], (slice(None), index[b]), weights[b])  # padding adds 0 to row 0
    np.testing.assert_array_equal(rebuilt.reshape(height, -1), dense)
    if height == 640:  # blocks of 32 output rows need 13 of the 140 source rows
        assert weights.shape == (20, 32, 13)


def _mean_of_heatmaps(layers, size):
    """The definition: each layer's heatmaps (upsampled and min-max scaled CAMs; a constant
    CAM gives zeros), their sum scaled."""
    return normalize_maps(sum(heatmaps_of([c], size) for c in layers))


@pytest.mark.parametrize(("shapes", "size"), [
    ([(80, 80), (40, 40), (20, 20)], (640, 640)), ([(7, 7), (14, 14)], (224, 224)),
    ([(13, 11), (5, 9)], (5, 7)), ([(3, 40), (6, 20), (12, 10)], (17, 33)),
])
def test_fused_heatmaps_are_the_scaled_mean_of_the_layers_heatmaps(shapes, size):
    import onnxruntime as ort

    from explainer.maps import fused_heatmaps, heatmap_feeds, heatmap_model
    rng = np.random.default_rng(2)
    layers = [np.maximum(rng.standard_normal((6, *s)), 0).astype(np.float32) * 100 + 5
              for s in shapes]
    layers[1][2] = 3.0  # constant in one layer: that layer adds nothing to the map
    want = _mean_of_heatmaps(layers, size)
    np.testing.assert_allclose(fused_heatmaps(layers, size), want, atol=2e-6)
    session = ort.InferenceSession(heatmap_model(len(layers)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, heatmap_feeds(layers, size))
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert got.min() >= 0 and got.max() <= 1  # scaled on a few outputs, clipped


@pytest.mark.parametrize(("shape", "size"), [
    ((80, 80), (640, 640)), ((20, 20), (640, 640)), ((7, 9), (224, 300)), ((13, 11), (5, 7)),
    ((3, 40), (17, 33)), ((1, 5), (4, 9)), ((9, 9), (9, 9)),
])
def test_upsampled_range_is_the_range_of_the_resize(shape, size):
    from explainer.maps import upsampled_range
    rng = np.random.default_rng(3)
    for _ in range(10):
        cams = (rng.standard_normal((4, *shape)) * rng.random()).astype(np.float32)
        full = upsample_bilinear(cams, size).reshape(4, -1)
        low, high = upsampled_range(cams, size)
        np.testing.assert_allclose(low, full.min(axis=1), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(high, full.max(axis=1), rtol=1e-6, atol=1e-7)


def test_mean_fusion_needs_no_layer_heatmaps():
    rng = np.random.default_rng(4)
    cams = [rng.random((2, 3, s, s)).astype(np.float32) for s in (16, 8, 4)]
    lazy = {str(i): LayerMaps(c, size=(64, 64)) for i, c in enumerate(cams)}
    fused = fuse(lazy, "mean")
    assert not any(m.computed for m in lazy.values())  # one fused resize of the CAMs
    want = _mean_of_heatmaps([c.reshape(-1, s, s) for c, s in zip(cams, (16, 8, 4))], (64, 64))
    np.testing.assert_allclose(fused, want.reshape(2, 3, 64, 64), atol=2e-6)
    # a layer's heatmaps, read, are its own; max and None fusion read them
    np.testing.assert_allclose(lazy["1"].heatmaps, heatmaps_of([cams[1]], (64, 64)), atol=0)
    assert lazy["1"].computed and not lazy["0"].computed
    stacked = np.stack([m.heatmaps for m in lazy.values()])
    np.testing.assert_allclose(fuse(lazy, "max"), normalize_maps(stacked.max(0)), atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        LayerMaps(cams[0])


# --- every odd image decodes to the pixels of its 8-bit RGB twin ---------------------------------

def _chelsea() -> np.ndarray:
    """A real photo (scikit-image's chelsea, 300x451 RGB uint8)."""
    return pytest.importorskip("skimage.data").chelsea()


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _as_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Reference compositing in float: round((c * a + 255 * (255 - a)) / 255)."""
    a = alpha.astype(np.float64)[..., None]
    return np.round((color.astype(np.float64) * a + 255.0 * (255.0 - a)) / 255.0).astype(np.uint8)


def _alpha_ramp(shape: tuple[int, int]) -> np.ndarray:
    """Alpha from 0 (left, fully transparent) to 255 (right, opaque), a fully opaque top band."""
    alpha = np.broadcast_to(np.linspace(0, 255, shape[1]).round().astype(np.uint8), shape).copy()
    alpha[:20] = 255
    return alpha


def _loaded(tmp_path, img: Image.Image, name: str, **save) -> np.ndarray:
    path = tmp_path / name
    img.save(path, **save)
    out = load_image(path)
    assert out.mode == "RGB"
    return np.asarray(out)


def test_grayscale_png_equals_its_rgb_twin(tmp_path):
    gray = _gray(_chelsea())
    np.testing.assert_array_equal(_loaded(tmp_path, Image.fromarray(gray, "L"), "g.png"),
                                  _as_rgb(gray))
    np.testing.assert_array_equal(np.asarray(load_image(gray)), _as_rgb(gray))  # HxW array


def test_gray_with_alpha_is_composited_on_white(tmp_path):
    gray = _gray(_chelsea())
    alpha = _alpha_ramp(gray.shape)
    la = Image.fromarray(np.stack([gray, alpha], axis=2), "LA")
    out = _loaded(tmp_path, la, "la.png")
    np.testing.assert_array_equal(out, _over_white(_as_rgb(gray), alpha))
    np.testing.assert_array_equal(out[:20], _as_rgb(gray)[:20])  # opaque: the gray twin
    np.testing.assert_array_equal(out[:, 0][20:], 255)  # fully transparent: the background


def test_rgba_is_composited_on_white(tmp_path):
    rgb = _chelsea()
    alpha = _alpha_ramp(rgb.shape[:2])
    rgba = np.concatenate([rgb, alpha[..., None]], axis=2)
    expected = _over_white(rgb, alpha)
    np.testing.assert_array_equal(_loaded(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"),
                                  expected)
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), expected)  # HxWx4 array
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(rgba, "RGBA"))), expected)
    opaque = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(np.asarray(load_image(opaque)), rgb)


def test_palette_image_with_and_without_transparency(tmp_path):
    quantized = Image.fromarray(_chelsea()).quantize(64)
    twin = np.asarray(quantized.convert("RGB"))
    np.testing.assert_array_equal(_loaded(tmp_path, quantized, "p.png"), twin)
    index = np.asarray(quantized)
    clear = int(np.bincount(index.ravel()).argmax())  # the most used palette entry
    out = _loaded(tmp_path, quantized, "pt.png", transparency=clear)
    assert Image.open(tmp_path / "pt.png").info.get("transparency") is not None
    hidden = index == clear
    assert hidden.any() and not hidden.all()
    np.testing.assert_array_equal(out[hidden], 255)
    np.testing.assert_array_equal(out[~hidden], twin[~hidden])


def test_cmyk_jpeg_matches_its_rgb_twin(tmp_path):
    rgb = _chelsea()
    cmyk_path, rgb_path = tmp_path / "cmyk.jpg", tmp_path / "rgb.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk_path, quality=95)
    Image.fromarray(rgb).save(rgb_path, quality=95)
    assert Image.open(cmyk_path).mode == "CMYK"
    out = np.asarray(load_image(cmyk_path)).astype(int)
    twin = np.asarray(load_image(rgb_path)).astype(int)
    # both are lossy copies of the same photo: as close to it as the RGB JPEG is
    assert np.abs(out - rgb).mean() < 2 and np.abs(twin - rgb).mean() < 2
    assert np.abs(out - twin).mean() < 3


def test_16_bit_grayscale_png_is_scaled_not_saturated(tmp_path):
    gray = _gray(_chelsea())
    offsets = np.random.default_rng(0).integers(-128, 128, gray.shape)
    deep = np.clip(gray.astype(np.int64) * 257 + offsets, 0, 65535).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(deep).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
        assert (np.asarray(img.convert("RGB")) == 255).mean() > 0.9  # Pillow's own: white
    np.testing.assert_array_equal(np.asarray(load_image(path)), _as_rgb(gray))
    big_endian = Image.frombuffer("I;16B", deep.shape[::-1], deep.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(big_endian)), _as_rgb(gray))


def test_32_bit_integer_image_is_taken_as_16_bit_range(tmp_path):
    gray = _gray(_chelsea())
    values = gray.astype(np.int32) * 257
    values[0, :10] = 70000  # above 65535: clipped to white
    values[1, :10] = -5  # below 0: clipped to black
    expected = _as_rgb(gray)
    expected[0, :10], expected[1, :10] = 255, 0
    img = Image.fromarray(values)
    assert img.mode == "I"
    np.testing.assert_array_equal(_loaded(tmp_path, img, "i.tif"), expected)


def test_float_image_is_taken_as_0_to_1(tmp_path):
    gray = _gray(_chelsea())
    values = gray.astype(np.float32) / 255
    values[0, :10], values[1, :10], values[2, :10] = 1.5, -0.5, np.nan
    expected = _as_rgb(gray)
    expected[0, :10], expected[1, :10], expected[2, :10] = 255, 0, 0
    img = Image.fromarray(values)
    assert img.mode == "F"
    np.testing.assert_array_equal(_loaded(tmp_path, img, "f.tif"), expected)


# stored pixels for each EXIF orientation, given the upright picture (EXIF 2.3, tag 0x0112)
_STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),  # shown after turning 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),  # shown after turning 90 degrees counterclockwise
}


@pytest.mark.parametrize("orientation", sorted(_STORED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = _chelsea()
    stored = np.ascontiguousarray(_STORED[orientation](upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    out = np.asarray(load_image(path)).astype(int)
    assert out.shape == upright.shape
    assert np.abs(out - upright).mean() < 2.5
    if orientation != 1:  # the stored pixels, taken as they are, are another picture
        raw = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert raw.shape != upright.shape or np.abs(raw - upright).mean() > 20


# --- broken files are ImageError naming the file and the problem ----------------------------------

def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_chelsea()).save(buffer, "PNG")
    return buffer.getvalue()


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        ("empty.png", lambda: b"", "empty"),
        ("notes.txt", lambda: b"a text file, not a picture\n" * 20, "not an image"),
        ("fake.jpg", lambda: b"\xff\xd8\xff\xe0 and then nonsense", "not an image|corrupt"),
        ("truncated.jpg", lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
        ("truncated.png", lambda: _png_bytes()[: len(_png_bytes()) // 2], "truncated"),
        ("corrupt.png", lambda: _corrupt(_png_bytes()), "corrupt"),
    ],
)
def test_broken_files_raise_image_error(tmp_path, name, make, problem):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageError, match=problem) as caught:
        load_image(path)
    assert name in str(caught.value)
    with pytest.raises(ImageError, match=name.replace(".", r"\.")):
        preprocess([path], Preprocessing())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on to half-decode


def test_truncated_pil_image_is_an_image_error(tmp_path):
    path = tmp_path / "cut.jpg"
    data = _jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as img, pytest.raises(ImageError, match="truncated"):
        load_image(img)


# --- decompression bombs are refused from the header ----------------------------------------------

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit gray pixels, with almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_bomb_over_the_default_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 10_000))  # 1e8 > Pillow's 89,478,485
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError) as caught:
            load_image(path)
    message = str(caught.value)
    # a size error, not a decoding error: the header was checked before any pixel was decoded
    for part in ("bomb.png", "10000x10000", "100,000,000", f"{before:,}", "max_pixels"):
        assert part in message, message
    assert Image.MAX_IMAGE_PIXELS == before


def test_bomb_over_pillows_hard_limit_names_it(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20_000, 20_000))
    with pytest.raises(ImageError, match=r"huge\.png.*MAX_IMAGE_PIXELS"):
        load_image(path, max_pixels=10**9)


def test_max_pixels_is_threaded_through(tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(_chelsea()).save(path)  # 451 x 300 = 135,300 pixels
    pre = Preprocessing(resize=(32, 32), crop=None)
    for call in (lambda m: load_image(path, max_pixels=m),
                 lambda m: prepare_image(path, pre, max_pixels=m),
                 lambda m: preprocess([path], pre, max_pixels=m)):
        with pytest.raises(ImageError, match=r"cat\.png: 451x300 = 135,300 pixels.*100,000"):
            call(100_000)
        call(135_300)  # exactly at the limit is fine
    with pytest.raises(ImageError, match="max_pixels"):
        load_image(_chelsea(), max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_default_limit_follows_pillows_setting(tmp_path, monkeypatch):
    path = tmp_path / "cat.png"
    Image.fromarray(_chelsea()).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # a user's own global choice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="100,000"):
            load_image(path)
        assert load_image(path, max_pixels=200_000).size == (451, 300)


def test_heatmaps_of_constant_cams_are_zeros_and_the_rest_as_upsampled():
    rng = np.random.default_rng(0)
    cams = rng.random((2, 3, 5, 7)).astype(np.float32)
    cams[0, 1] = 0.0  # a layer a detection's score does not reach
    cams[1, 2] = 4.0
    got = heatmaps_of([cams], (20, 28))
    want = normalize_maps(upsample_bilinear(cams, (20, 28)))
    np.testing.assert_array_equal(got, want)
    assert not got[0, 1].any() and got[0, 0].max() == pytest.approx(1.0)


def test_fused_layers_are_the_scaled_mean_or_max():
    rng = np.random.default_rng(1)
    maps = {name: LayerMaps(np.zeros(1), rng.random((1, 2, 6, 6)).astype(np.float32))
            for name in ("a", "b", "c")}
    stacked = np.stack([m.heatmaps for m in maps.values()])
    np.testing.assert_allclose(fuse(maps, "mean"), normalize_maps(stacked.mean(0)), atol=1e-6)
    np.testing.assert_allclose(fuse(maps, "max"), normalize_maps(stacked.max(0)), atol=1e-6)
    np.testing.assert_array_equal(fuse(maps, None), maps["a"].heatmaps)
