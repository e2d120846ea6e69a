"""Reading every input kind, writing videos atomically, and one-sentence errors for unusable inputs."""

import re

import numpy as np
import pytest

from dreamix_jax.data import synthetic, video_io


@pytest.fixture(scope="module")
def clip():
    attrs = synthetic.Attributes("blue", "square", "down", "white", "large", (0.5, 0.3), (0.4, 1.5, 0.0))
    return synthetic.render(attrs, 6, 32, 48)


def test_mp4_round_trip_keeps_frames_size_and_fps(tmp_path, clip):
    path = video_io.write_video(tmp_path / "clip.mp4", clip, fps=6.0)
    back, fps = video_io.read_frames(path)
    assert back.shape == clip.shape and fps == 6.0
    assert np.abs(back - clip).mean() < 0.03  # lossy, but close
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_gif_and_frame_folder_and_image(tmp_path, clip):
    import imageio.v3 as iio

    video_io.write_video(tmp_path / "clip.gif", clip, fps=4.0)
    back, fps = video_io.read_frames(tmp_path / "clip.gif")
    assert back.shape == clip.shape and fps == pytest.approx(4.0, rel=0.05)

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(video_io.to_uint8(clip)):
        iio.imwrite(frames / f"{i:03d}.png", frame)
    back, _ = video_io.read_frames(frames)
    np.testing.assert_allclose(back, video_io.to_uint8(clip) / 127.5 - 1.0, atol=1e-6)  # PNG is lossless

    image, _ = video_io.read_frames(frames / "000.png")
    assert image.shape == (1, 32, 48, 3)


def test_grayscale_and_alpha_become_rgb(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "gray.png", np.full((8, 8), 64, np.uint8))
    gray, _ = video_io.read_frames(tmp_path / "gray.png")
    assert gray.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(gray, 64 / 127.5 - 1.0, atol=1e-6)

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 4:, 3] = 255
    iio.imwrite(tmp_path / "rgba.png", rgba)
    image, _ = video_io.read_frames(tmp_path / "rgba.png")
    np.testing.assert_allclose(image[0, 0, 0], [1.0, 1.0, 1.0])  # transparent → white
    np.testing.assert_allclose(image[0, 0, 7], [1.0, -1.0, -1.0])


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.mp4", "does not exist"),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", "neither a video"),
    (lambda d: (d / "broken.mp4").write_bytes(b"not a video") and d / "broken.mp4", "Cannot decode video"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "holds no images"),
])
def test_unusable_inputs_get_one_sentence(tmp_path, make, message):
    with pytest.raises(video_io.InputError, match=message):
        video_io.read_frames(make(tmp_path))


def test_side_by_side_panels(clip):
    frames = video_io.side_by_side([clip, clip], ["input", "a prompt"], scale=2, gap=4)
    assert frames.dtype == np.uint8
    assert frames.shape == (6, 64 + 14, 2 * 96 + 4, 3)


# Image decoding: every Pillow mode, EXIF orientation, large and unreadable files.

RED, BLUE = (200, 40, 30), (20, 60, 220)
PALETTE = [0, 0, 0, *RED, *BLUE]  # index 1 is RED, index 2 is BLUE
PATCH, BACKGROUND = (3, 1), (3, 6)  # (row, column) in the 6×8 test images: left half patch, right half background
WHITE = (1.0, 1.0, 1.0)


def _rgb(color):
    return tuple(c / 255 for c in color)


def _gray(value, full=255):
    return (value / full,) * 3


def _over_white(color, alpha):
    return tuple(c * alpha + 1 - alpha for c in color)


def _unit(clip):
    """The single frame of a clip from read_frames, back in [0, 1]."""
    return (np.asarray(clip[0]) + 1.0) / 2.0


def _patch_image(mode, patch, background, palette=None):
    from PIL import Image

    image = Image.new(mode, (8, 6), background)
    image.paste(Image.new(mode, (4, 6), patch), (0, 0))  # pasting a bare 16-bit value repeats its low byte
    if palette:
        image.putpalette(palette)
    return image


@pytest.mark.parametrize("mode, suffix, patch, background, save, expect_patch, expect_background", [
    ("RGB", "png", RED, BLUE, {}, _rgb(RED), _rgb(BLUE)),
    ("RGBA", "png", (*RED, 128), (*BLUE, 0), {}, _over_white(_rgb(RED), 128 / 255), WHITE),
    ("LA", "png", (100, 128), (30, 255), {}, _over_white(_gray(100), 128 / 255), _gray(30)),
    ("L", "png", 100, 30, {}, _gray(100), _gray(30)),
    ("1", "png", 0, 1, {}, (0.0, 0.0, 0.0), WHITE),
    ("1", "bmp", 0, 1, {}, (0.0, 0.0, 0.0), WHITE),
    ("P", "png", 1, 2, {}, _rgb(RED), _rgb(BLUE)),
    ("P", "png", 1, 2, {"transparency": 2}, _rgb(RED), WHITE),
    ("P", "bmp", 1, 2, {}, _rgb(RED), _rgb(BLUE)),
    ("PA", "tif", (1, 128), (2, 255), {}, _over_white(_rgb(RED), 128 / 255), _rgb(BLUE)),
    ("LAB", "tif", (114, 189, 176), (85, 167, 42), {}, _rgb(RED), _rgb(BLUE)),  # ImageCms's LAB of RED and BLUE
    ("I;16", "png", 50000, 10000, {}, _gray(50000, 65535), _gray(10000, 65535)),
    ("I;16", "tif", 50000, 10000, {}, _gray(50000, 65535), _gray(10000, 65535)),
    ("I;16B", "tif", 50000, 10000, {}, _gray(50000, 65535), _gray(10000, 65535)),
    ("I", "tif", 2**30, -5, {}, _gray(2**30, 2**31 - 1), (0.0, 0.0, 0.0)),  # negatives clip to black
    ("F", "tif", 0.75, 0.25, {}, _gray(0.75, 1), _gray(0.25, 1)),
    ("RGBA", "webp", (*RED, 255), (*BLUE, 0), {"lossless": True}, _rgb(RED), WHITE),
])
def test_every_mode_decodes_to_rgb(tmp_path, mode, suffix, patch, background, save, expect_patch, expect_background):
    path = tmp_path / f"{mode.replace(';', '')}.{suffix}"
    _patch_image(mode, patch, background, PALETTE if mode.startswith("P") else None).save(path, **save)
    image = _unit(video_io.read_frames(path)[0])
    assert image.shape == (6, 8, 3)
    np.testing.assert_allclose(image[PATCH], expect_patch, atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(image[BACKGROUND], expect_background, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("suffix, atol", [("tif", 1 / 255), ("jpg", 3 / 255)])  # JPEG is lossy
def test_cmyk_is_converted_not_read_as_alpha(tmp_path, suffix, atol):
    from PIL import Image

    cyan_ish, red_ish = (180, 20, 0, 10), (0, 200, 190, 30)
    _patch_image("CMYK", red_ish, cyan_ish).resize((32, 16), Image.Resampling.NEAREST).save(
        tmp_path / f"cmyk.{suffix}", quality=95, subsampling=0)
    image = _unit(video_io.read_frames(tmp_path / f"cmyk.{suffix}")[0])
    for (row, column), cmyk in [((8, 8), red_ish), ((8, 24), cyan_ish)]:
        expected = _rgb(Image.new("CMYK", (1, 1), cmyk).convert("RGB").getpixel((0, 0)))
        np.testing.assert_allclose(image[row, column], expected, atol=atol + 1e-6)
        assert image[row, column].mean() < 0.9  # the old bug: K taken as alpha gave white


def _write_png16(path, pixels):
    """A 16-bit PNG of (H, W, C) uint16 pixels, C in 1-4; Pillow cannot write 16-bit colour PNGs."""
    import struct
    import zlib

    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("patch, background", [  # low bytes that 8-bit truncation loses the most
    ((0x7FFF,), (0x00FF,)),
    ((0x7FFF, 0x8000), (0x00FF, 0xFFFF)),
    ((0x00FF, 0x7FFF, 0xFFFF), (0x1234, 0xABCD, 0x0101)),
    ((0x00FF, 0x7FFF, 0xFFFF, 0x8000), (0x1234, 0xABCD, 0x0101, 0xFFFF)),
], ids=["gray", "gray-alpha", "rgb", "rgba"])
def test_16_bit_png_keeps_values(tmp_path, patch, background):
    pixels = np.empty((6, 8, len(patch)), np.uint16)
    pixels[:, :4], pixels[:, 4:] = patch, background
    _write_png16(tmp_path / "deep.png", pixels)
    image = _unit(video_io.read_frames(tmp_path / "deep.png")[0])
    expected = video_io.to_unit_rgb(pixels)  # the exact 16-bit values, alpha over white
    np.testing.assert_allclose(image[PATCH], expected[PATCH], atol=1 / 255)
    np.testing.assert_allclose(image[BACKGROUND], expected[BACKGROUND], atol=1 / 255)


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    from PIL import Image

    image = Image.new("RGB", (48, 32), BLUE)
    image.paste(RED, (0, 0, 16, 16))  # top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    image.save(tmp_path / f"rotated.{suffix}", exif=exif, quality=95, subsampling=0)
    shown = _unit(video_io.read_frames(tmp_path / f"rotated.{suffix}")[0])
    assert shown.shape == (48, 32, 3)
    np.testing.assert_allclose(shown[8, 24], _rgb(RED), atol=3 / 255)  # stored top-left is now top-right
    np.testing.assert_allclose(shown[8, 8], _rgb(BLUE), atol=3 / 255)


@pytest.mark.parametrize("suffix, size, drafted", [
    ("jpg", (6000, 4000), [(3000, 2000)]),  # JPEG decodes at half size, then is resized
    ("png", (4100, 1000), []),
])
def test_large_images_are_decoded_reduced(tmp_path, monkeypatch, suffix, size, drafted):
    from PIL import Image, JpegImagePlugin

    Image.new("RGB", size, RED).save(tmp_path / f"large.{suffix}", quality=95)
    sizes = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self, mode, size):
        result = draft(self, mode, size)
        if result:
            sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    image = _unit(video_io.read_frames(tmp_path / f"large.{suffix}")[0])
    assert sizes == drafted
    assert max(image.shape[:2]) == video_io.MAX_IMAGE_SIDE
    assert image.shape[1] / image.shape[0] == pytest.approx(size[0] / size[1], rel=0.01)
    np.testing.assert_allclose(image[::97, ::97], np.broadcast_to(_rgb(RED), image[::97, ::97].shape),
                               atol=3 / 255)


@pytest.mark.parametrize("sizes, expect", [
    ([(2100, 1000), (2100, 1000)], (2, 975, 2048, 3)),
    ([(2100, 1000), (2100, 1200)], "different sizes"),
])
def test_frame_folder_sizes_agree_after_reduction(tmp_path, sizes, expect):
    from PIL import Image

    for i, size in enumerate(sizes):
        Image.new("L", size, 128).save(tmp_path / f"{i:03d}.png")
    if isinstance(expect, str):
        with pytest.raises(video_io.InputError, match=expect):
            video_io.read_frames(tmp_path)
    else:
        assert video_io.read_frames(tmp_path)[0].shape == expect


def _noise_image(path, **save):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(path, **save)
    return path


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make, name", [
    (lambda d: _truncated(_noise_image(d / "cut.png")), "cut.png"),
    (lambda d: _truncated(_noise_image(d / "cut.jpg")), "cut.jpg"),
    (lambda d: (d / "notes.png").write_text("not an image") and d / "notes.png", "notes.png"),
    (lambda d: (d / "empty.jpg").write_bytes(b"") or d / "empty.jpg", "empty.jpg"),
    (lambda d: _noise_image(d / "000.png") and _truncated(_noise_image(d / "001.png")).parent, "001.png"),
])
def test_unreadable_images_name_the_file(tmp_path, make, name):
    with pytest.raises(video_io.InputError, match=rf"Cannot read image \S*{re.escape(name)} .*give a PNG or JPEG"):
        video_io.read_frames(make(tmp_path))


@pytest.mark.parametrize("size", [(40, 30), (100, 100)])  # over the limit (Pillow warns), over twice it (raises)
def test_decompression_bombs_are_refused(tmp_path, monkeypatch, size):
    from PIL import Image

    Image.new("RGB", size, RED).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(video_io.InputError, match=rf"bomb\.png .*{size[0] * size[1]} pixels.*downscale it"):
        video_io.read_frames(tmp_path / "bomb.png")


def test_float_image_out_of_range_is_refused(tmp_path):
    _patch_image("F", 255.0, 0.0).save(tmp_path / "hdr.tif")
    with pytest.raises(video_io.InputError, match=r"hdr\.tif holds values from 0\.0 to 255\.0, outside \[0, 1\]"):
        video_io.read_frames(tmp_path / "hdr.tif")
