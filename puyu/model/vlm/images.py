"""Images in: one checked way to read them, and the pixel operations the processors share.

``load_image(source, max_pixels=MAX_PIXELS)`` returns an RGB ``PIL.Image.Image`` from a path, raw bytes or a
PIL image.  Everything a user can get wrong is a :class:`~puyu.errors.ConfigError` saying what to do: a missing
file, bytes that are not an image, a truncated or corrupt file, a mode puyu does not convert (16-bit and float
greyscale, multi-channel formats outside PIL's 8-bit modes), and an image over ``max_pixels`` (checked from the
header, before any pixel is decoded, so a decompression bomb costs nothing).  Transparency is composited onto
white, as transformers' ``convert_to_rgb`` does.

The operations reproduce transformers' PIL/numpy image-processor backend: :func:`resize` is PIL's resize
with the config's filter (transformers hands uint8 images to PIL the same way), :func:`center_crop` cuts the
same box (zero-padded where the crop is larger), :func:`to_tensor` rescales in float64, casts to float32 and
normalises per channel in float32.  Pillow is imported on first use; without it every call says how to install it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from puyu.errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_PIXELS = 50_000_000  # a 50-megapixel photo decodes to 150 MB of RGB; anything larger is refused
# PIL's 8-bit modes, which convert to RGB without losing range; "I", "I;16*" and "F" (16/32-bit) do not.
MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ConfigError("reading images needs Pillow: pip install pillow") from None
    return Image


def load_image(source: str | Path | bytes | Image, max_pixels: int = MAX_PIXELS) -> Image:
    """An RGB image from a path, encoded bytes or a PIL image (see the module docstring).

    Raises:
        ConfigError: the source cannot be read as a supported image within ``max_pixels``.
    """
    pil = _pil()
    if isinstance(source, pil.Image):
        image, name = source, "the image"
    elif isinstance(source, (bytes, bytearray)):
        image, name = _open(pil, io.BytesIO(source), "the image data"), "the image data"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"image {path} does not exist or is not a file")
        image, name = _open(pil, path, str(path)), str(path)
    else:
        raise ConfigError(f"an image is a path, bytes or a PIL image, not {type(source).__name__}")
    width, height = image.size
    if width * height > max_pixels:
        raise ConfigError(f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
                          f"{max_pixels / 1e6:g}; downscale it first")
    if image.mode not in MODES:
        raise ConfigError(f"{name} has the image mode {image.mode!r}, which puyu does not convert; "
                          f"save it as 8-bit RGB or greyscale (PNG or JPEG)")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"{name} is damaged or truncated ({exc}); re-export or re-download it") from None
    return _to_rgb(pil, image)


def _open(pil: Any, file: Any, name: str) -> Image:
    try:
        return pil.open(file)
    except pil.DecompressionBombError:
        raise ConfigError(f"{name} is larger than Pillow opens safely; downscale it first") from None
    except (pil.UnidentifiedImageError, OSError, ValueError):
        raise ConfigError(f"{name} is not an image Pillow can read (PNG, JPEG, WebP, GIF, BMP ...)") from None


def _to_rgb(pil: Any, image: Image) -> Image:
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return pil.alpha_composite(pil.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def resize(image: Image, height: int, width: int, resample: int) -> Image:
    """``image`` resized to ``height x width`` with PIL filter ``resample`` (3 bicubic, 1 Lanczos, 2 bilinear ...)."""
    return image.resize((width, height), resample=resample)


def center_crop(image: Image, height: int, width: int) -> Image:
    """The centred ``height x width`` box (top-left at the floor of the half difference; outside the image is black)."""
    top, left = (image.height - height) // 2, (image.width - width) // 2
    return image.crop((left, top, left + width, top + height))


def pad_to_square(image: Image, color: tuple[int, int, int]) -> Image:
    """``image`` centred on a square of its longer side filled with ``color`` (offsets rounded down)."""
    side = max(image.size)
    square = _pil().new("RGB", (side, side), color)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def to_tensor(images: list[Image], rescale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Float32 pixels ``[N, 3, H, W]`` of same-size RGB images: ``(x * rescale - mean) / std`` per channel."""
    arrays = []
    for image in images:
        x = (np.asarray(image).astype(np.float64) * rescale).astype(np.float32).transpose(2, 0, 1)
        arrays.append((x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None])
    return torch.from_numpy(np.stack(arrays))
