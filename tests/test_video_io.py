"""Reading every input kind, writing videos atomically, and one-sentence errors for unusable inputs."""

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
