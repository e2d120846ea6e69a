"""Reading inputs (videos, frame folders, images) and writing videos, atomically, on a local disk or gs://.

Clips are float32 arrays (T, H, W, 3) in [-1, 1]. Grayscale inputs get three equal channels and
alpha is composited over white. Images are decoded with Pillow, turned upright by their EXIF
orientation, and reduced while decoding to at most MAX_IMAGE_SIDE pixels on their longest side.
Every Pillow mode becomes RGB: palette, bilevel, CMYK, YCbCr, LAB and HSV by Pillow's conversion,
16-bit integers scaled by 65535, 32-bit integers ("I") by 2**31 - 1 with negatives clipped to 0, and
float ("F") images must already lie in [0, 1]. Every way an input can be unusable stops with one
sentence that names the file and the fix, before anything is computed.
"""

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from etils import epath

from dreamix_jax import workdir

if TYPE_CHECKING:  # Pillow is imported where it is used
    from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # TIFF carries 16/32-bit and float
MAX_IMAGE_SIDE = 2048  # longest side, in pixels, images are decoded at; larger ones are reduced
# Integer modes → the value of full intensity; "I" is signed 32-bit.
_INTEGER_FULL_SCALE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 2**31 - 1}
# Modes resized and read as they are: 8-bit gray or RGB with or without alpha, and float.
_KEPT_MODES = ("L", "LA", "RGB", "RGBA", "F")
# Modes that carry alpha keep it (composited over white later); every other mode is converted to RGB.
_ALPHA_MODES = {"P": "RGBA", "PA": "RGBA", "La": "LA", "RGBa": "RGBA"}
DEFAULT_FPS = 8.0  # for inputs that carry no frame rate (frame folders, images)


class InputError(ValueError):
    """An input that cannot be used, with what is wrong and how to fix it."""


def to_unit_rgb(frame: np.ndarray) -> np.ndarray:
    """A decoded uint8/float frame (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) → (H, W, 3) float32 in [0, 1]."""
    frame = np.asarray(frame)
    scale = 255.0 if frame.dtype == np.uint8 else 65535.0 if frame.dtype == np.uint16 else 1.0
    frame = frame.astype(np.float32) / scale
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] == 4:  # composite over white
        alpha = frame[..., 3:]
        frame = frame[..., :3] * alpha + (1.0 - alpha)
    if frame.shape[-1] == 2:  # gray + alpha
        alpha = frame[..., 1:]
        frame = frame[..., :1] * alpha + (1.0 - alpha)
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise InputError(f"A frame of shape {frame.shape} is not an image; give RGB, RGBA or grayscale frames.")
    return frame


def _draft_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size scaled down so its longest side is MAX_IMAGE_SIDE (rounded up), or the size if smaller."""
    longest = max(size)
    if longest <= MAX_IMAGE_SIDE:
        return size
    return tuple(-(-side * MAX_IMAGE_SIDE // longest) for side in size)


def _in_readable_mode(image: "Image.Image", path: epath.Path) -> "Image.Image":
    """The image as 8-bit L/LA/RGB/RGBA, or float F in [0, 1] (integer modes scaled by their full range)."""
    if image.mode == "F":
        low, high = image.getextrema()
        if not 0.0 <= low <= high <= 1.0:  # also refuses NaN; clipping would silently whiten e.g. 0-255 floats
            raise InputError(f"Float image {path} holds values from {low} to {high}, outside [0, 1]; scale it "
                             "into [0, 1] or save it as an 8- or 16-bit PNG.")
    if image.mode in _KEPT_MODES:
        return image
    if image.mode in _INTEGER_FULL_SCALE:  # Pillow cannot resize 16-bit modes, and I → L would clip, not scale
        scale = 1.0 / _INTEGER_FULL_SCALE[image.mode]
        return image.convert("F").point(lambda value: value * scale)
    return image.convert(_ALPHA_MODES.get(image.mode, "RGB"))


def _decoded_pixels(image: "Image.Image", path: epath.Path) -> np.ndarray:
    """An opened image, upright and at most MAX_IMAGE_SIDE on its longest side → uint8 or float32 [0, 1] pixels."""
    from PIL import ImageOps

    image.draft(None, _draft_size(image.size))  # JPEG decodes at 1/2, 1/4 or 1/8 size; other formats ignore it
    ImageOps.exif_transpose(image, in_place=True)
    image = _in_readable_mode(image, path)
    image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    pixels = np.asarray(image)
    # Bicubic resizing overshoots a little at float edges, and "I" may hold negatives.
    return np.clip(pixels, 0.0, 1.0) if image.mode == "F" else pixels


def _read_image(path: epath.Path) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, rather than decode, huge images
            with path.open("rb") as file, Image.open(file) as image:
                return to_unit_rgb(_decoded_pixels(image, path))
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"Image {path} is too large to decode safely ({str(error).rstrip('.')}); downscale it to "
                         f"at most {MAX_IMAGE_SIDE} px on its longest side first.") from error
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error) for bad files
        raise InputError(f"Cannot read image {path} ({error}); give a PNG or JPEG file.") from error


def _read_video_file(path: epath.Path) -> tuple[np.ndarray, float]:
    import imageio.v3 as iio

    try:
        with workdir.local_copy(path) as local:  # ffmpeg reads files by name
            meta = iio.immeta(local)
            frames = [to_unit_rgb(f) for f in iio.imiter(local)]
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"Cannot decode video {path} ({error}); give an mp4, webm or gif that plays.") from error
    fps = float(meta.get("fps") or 0.0)
    if not fps and meta.get("duration"):  # gifs give a per-frame duration in ms
        fps = 1000.0 / float(meta["duration"])
    if not frames:
        raise InputError(f"Video {path} has zero frames; give a clip with at least one frame.")
    return np.stack(frames), fps or DEFAULT_FPS


def _images_in(folder: epath.Path) -> list[epath.Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """A video file, an image, or a folder of frames/images → (clip (T, H, W, 3) in [-1, 1], fps).

    A folder's images are read in name order. Frames of different sizes are an error. `path` is
    local or gs://.
    """
    path = workdir.as_path(path)
    if not path.exists():
        raise InputError(f"Input {path} does not exist; check the path given as --config.input.")
    if path.is_dir():
        files = _images_in(path)
        if not files:
            raise InputError(f"Folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the frames there.")
        frames = [_read_image(f) for f in files]
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise InputError(f"The images in {path} have different sizes {sorted(sizes)}; resize them to one size.")
        clip, fps = np.stack(frames), DEFAULT_FPS
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        clip, fps = _read_video_file(path)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        clip, fps = _read_image(path)[None], DEFAULT_FPS
    else:
        raise InputError(f"Input {path} is neither a video ({', '.join(VIDEO_SUFFIXES)}), an image "
                         f"({', '.join(IMAGE_SUFFIXES)}) nor a folder of images.")
    return clip * 2.0 - 1.0, fps


def to_uint8(clip: np.ndarray) -> np.ndarray:
    """A clip in [-1, 1] → uint8 frames."""
    return np.round((np.clip(np.asarray(clip, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def write_video(path: str | os.PathLike, clip: np.ndarray, fps: float, *, scale: int = 1) -> epath.Path:
    """Write a clip (T, H, W, 3), in [-1, 1] or uint8, as mp4 (H.264) or gif, in one step (`workdir.atomic_path`).

    `scale` enlarges every frame by pixel repetition (tiny clips are unreadable at their own size).
    """
    import imageio.v3 as iio

    path = workdir.as_path(path)
    frames = clip if clip.dtype == np.uint8 else to_uint8(clip)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    if path.suffix.lower() != ".gif":  # H.264 in yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    with workdir.atomic_path(path) as tmp:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            # Even sizes and yuv420p make the file play everywhere; macro_block_size=1 keeps our size.
            iio.imwrite(tmp, frames, extension=path.suffix, fps=fps, codec="libx264", macro_block_size=1,
                        pixelformat="yuv420p", output_params=["-crf", "12"])
    return path


def label(frame: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    """A uint8 frame (H, W, 3) with a caption strip of `text` added above it."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (frame.shape[1], height), (0, 0, 0))
    ImageDraw.Draw(strip).text((2, 1), text, fill=(255, 255, 255))
    return np.concatenate([np.asarray(strip), frame], axis=0)


def side_by_side(clips: Sequence[np.ndarray], captions: Sequence[str], *, scale: int = 4, gap: int = 4) -> np.ndarray:
    """Clips (T, H, W, 3) in [-1, 1] of one size, enlarged and captioned, next to each other → uint8 frames.

    Captions longer than their panel are cut; the whole prompt goes in `result.json`.
    """
    panels = []
    for clip, caption in zip(clips, captions, strict=True):
        frames = to_uint8(clip).repeat(scale, axis=1).repeat(scale, axis=2)
        panels.append(np.stack([label(f, caption) for f in frames]))
    spacer = np.zeros((*panels[0].shape[:2], gap, 3), np.uint8)
    joined = [panels[0]]
    for panel in panels[1:]:
        joined += [spacer, panel]
    return np.concatenate(joined, axis=2)
