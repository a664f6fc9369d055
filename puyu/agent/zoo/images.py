"""``image_info`` and ``image_edit``: what an image is, and crop / resize / convert it, with Pillow.

``image_edit`` writes its result as a new file in the folder and returns it as an image of the
step (:class:`~puyu.agent.tools.ToolOutput`), so the user sees what the agent made.
"""

from __future__ import annotations

import mimetypes
from typing import Literal

from puyu.agent.folder import Folder
from puyu.agent.tools import Tool, ToolImage, ToolOutput

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_SIDE = 8192


def _open(folder: Folder, path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(folder.existing(path))
    except UnidentifiedImageError:
        raise ValueError(f"{path!r} is not an image Pillow can read") from None


def image_info_tool(folder: Folder) -> Tool:
    """The image-inspection tool over ``folder``."""

    def image_info(path: str) -> dict:
        """Tell an image file's width, height, colour mode and format.

        Args:
            path: the image's path relative to the allowed folder.
        """
        with _open(folder, path) as image:
            return {"width": image.width, "height": image.height, "mode": image.mode, "format": image.format}

    return Tool(image_info)


def image_edit_tool(folder: Folder) -> Tool:
    """The image-editing tool over ``folder`` (writes new files there)."""

    def image_edit(path: str, output: str, crop: list[int] | None = None, resize: list[int] | None = None,
                   convert: Literal["RGB", "RGBA", "L", "1"] | None = None) -> ToolOutput:
        """Crop, resize and/or convert an image, in that order, and save the result as a new file.

        Args:
            path: the source image, relative to the allowed folder.
            output: the file to write (.png, .jpg, .webp ...), relative to the allowed folder.
            crop: [left, top, right, bottom] in pixels.
            resize: [width, height] in pixels.
            convert: the colour mode: RGB, RGBA, L (greyscale) or 1 (black and white).
        """
        target = folder.writable(output, SUFFIXES)
        with _open(folder, path) as image:
            result = image.copy()
        if crop is not None:
            if len(crop) != 4 or not (0 <= crop[0] < crop[2] <= result.width and 0 <= crop[1] < crop[3] <= result.height):
                raise ValueError(f"crop must be [left, top, right, bottom] inside the {result.width}x{result.height} image, got {crop}")
            result = result.crop(tuple(crop))
        if resize is not None:
            if len(resize) != 2 or not all(0 < side <= MAX_SIDE for side in resize):
                raise ValueError(f"resize must be [width, height], each 1 to {MAX_SIDE}, got {resize}")
            result = result.resize(tuple(resize))
        if convert is not None:
            result = result.convert(convert)
        if target.suffix.lower() in (".jpg", ".jpeg") and result.mode not in ("RGB", "L"):
            result = result.convert("RGB")  # JPEG has no alpha channel or palette
        result.save(target)
        name = str(target.relative_to(folder.base))
        mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return ToolOutput(f"wrote {name}: {result.width}x{result.height} {result.mode}", [ToolImage(name, mime, target.read_bytes())])

    return Tool(image_edit, effects={"writes_files"})
