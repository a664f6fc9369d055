"""Image processors: images -> pixel tiles, and the image tokens each one takes in the prompt.

Contract::

    processor = build_processor(config, preprocessor_config, tokens)     # usually from puyu.model.vlm.load_vlm
    prompt = processor.expand("USER: <image>\\nWhat is this?", [image])   # paths, bytes or PIL images
    prompt.text      # every placeholder replaced by its expansion (tokenize it with the model's tokenizer)
    prompt.pixels    # [tiles, 3, S, S] float32, all images' tiles in the order of their placeholders
    prompt.images    # per image: its tiles and its expansion (for caching an image's features by its pixels)

Each family reproduces its transformers processor (``preprocessor_config.json`` read as they read it):

- LLaVA (``CLIPImageProcessor``; ``LlavaImageProcessor`` adds ``do_pad``: pad to a square in the mean colour):
  resize the shortest edge, centre crop, one tile; ``<image>`` x the tile's tokens.
- InternVL (``GotOcr2ImageProcessor`` with ``crop_to_patches``, as ``InternVLProcessor`` always calls it): the
  tile grid with ``min_patches <= n <= max_patches`` tiles whose aspect ratio is nearest the image's, the image
  resized onto it and cut row by row, then a thumbnail of the whole image when there is more than one tile;
  ``<img>`` + ``<IMG_CONTEXT>`` x (tiles x tokens) + ``</img>``.
- Idefics3 / SmolVLM (``Idefics3ImageProcessor``): resize the longest edge to ``size``, round both sides up to
  multiples of ``max_image_size``, cut that grid row by row and append the whole image at ``max_image_size``;
  per tile ``<fake_token_around_image><row_r_col_c>`` + ``<image>`` x tokens, a newline after each row, then
  ``\\n<fake_token_around_image><global-img>`` + ``<image>`` x tokens + ``<fake_token_around_image>``.

Every image goes through :func:`~puyu.model.vlm.images.load_image` first (its checks and pixel limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from puyu.errors import ConfigError
from puyu.model.vlm.config import VLMConfig
from puyu.model.vlm.images import MAX_PIXELS, center_crop, load_image, pad_to_square, resize, to_tensor

if TYPE_CHECKING:
    from PIL.Image import Image

OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
IMAGENET_STANDARD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
BICUBIC, LANCZOS = 3, 1
MAX_IDEFICS3_SIDE = 4096  # transformers' MAX_IMAGE_SIZE: the longest edge after the first resize never exceeds it


@dataclass
class ProcessedImage:
    """One image: its tiles ``[tiles, 3, S, S]`` and the prompt text that stands for it."""

    pixels: torch.Tensor
    text: str


@dataclass
class ImagePrompt:
    """A prompt with its images expanded (see the module docstring)."""

    text: str
    pixels: torch.Tensor | None
    images: list[ProcessedImage]


class ImageProcessor:
    """The shared part: normalisation, the pixel limit and the placeholder expansion; families implement :meth:`tiles`.

    Attributes:
        placeholder: the text that marks where an image goes in a prompt (the model's image token).
        tokens_per_tile: image tokens one tile fills.
        max_pixels: larger images are refused (:data:`~puyu.model.vlm.images.MAX_PIXELS` unless set lower, e.g. by a server).
    """

    def __init__(self, placeholder: str, tokens_per_tile: int, pre: dict[str, Any], mean_std: tuple, resample: int):
        self.placeholder = placeholder
        self.tokens_per_tile = tokens_per_tile
        self.resample = int(pre.get("resample", resample))
        self.rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
        self.mean, self.std = tuple(pre.get("image_mean", mean_std[0])), tuple(pre.get("image_std", mean_std[1]))
        self.normalize = bool(pre.get("do_normalize", True))
        self.max_pixels = MAX_PIXELS

    def tiles(self, image: Image) -> tuple[list[Image], str]:
        """The RGB tiles of ``image`` and the text standing for them."""
        raise NotImplementedError

    def preprocess(self, source: Any) -> ProcessedImage:
        """One image (path, bytes or PIL image) -> its tiles and prompt text."""
        tiles, text = self.tiles(load_image(source, self.max_pixels))
        mean, std = (self.mean, self.std) if self.normalize else ((0.0,) * 3, (1.0,) * 3)
        return ProcessedImage(to_tensor(tiles, self.rescale, mean, std), text)

    def expand(self, text: str, images: list[Any]) -> ImagePrompt:
        """Replace the ``i``-th placeholder of ``text`` by the ``i``-th image's expansion.

        Raises:
            ConfigError: the number of placeholders differs from the number of images, or an image is bad.
        """
        parts = text.split(self.placeholder)
        if len(parts) - 1 != len(images):
            raise ConfigError(f"the prompt has {len(parts) - 1} image placeholders ({self.placeholder}) "
                              f"but {len(images)} images were given; put one placeholder where each image goes")
        processed = [self.preprocess(image) for image in images]
        out = [parts[0]]
        for image, rest in zip(processed, parts[1:]):
            out += [image.text, rest]
        pixels = torch.cat([p.pixels for p in processed]) if processed else None
        return ImagePrompt("".join(out), pixels, processed)


class LlavaProcessor(ImageProcessor):
    def __init__(self, placeholder: str, tokens_per_tile: int, pre: dict[str, Any], image_size: int):
        super().__init__(placeholder, tokens_per_tile, pre, OPENAI_CLIP, BICUBIC)
        size = pre.get("size", {"shortest_edge": image_size})
        self.shortest = size if isinstance(size, int) else size.get("shortest_edge")
        self.size = None if self.shortest else (size["height"], size["width"])
        crop = pre.get("crop_size", image_size)
        self.crop = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
        self.do_resize, self.do_crop = pre.get("do_resize", True), pre.get("do_center_crop", True)
        self.pad = bool(pre.get("do_pad", False))

    def tiles(self, image: Image) -> tuple[list[Image], str]:
        if self.pad and image.width != image.height:  # LlavaImageProcessor: centre on a square of the mean colour
            image = pad_to_square(image, tuple(int(m * 255) for m in self.mean))
        if self.do_resize:
            height, width = self.size or _shortest_edge(image.height, image.width, self.shortest)
            image = resize(image, height, width, self.resample)
        if self.do_crop:
            image = center_crop(image, *self.crop)
        return [image], self.placeholder * self.tokens_per_tile


def _shortest_edge(height: int, width: int, short: int) -> tuple[int, int]:
    """transformers' ``get_resize_output_image_size(default_to_square=False)``: the short side to ``short``."""
    long = int(short * max(height, width) / min(height, width))
    return (long, short) if width <= height else (short, long)


class InternVLProcessor(ImageProcessor):
    def __init__(self, placeholder: str, tokens_per_tile: int, pre: dict[str, Any], image_size: int, start: str, end: str):
        super().__init__(placeholder, tokens_per_tile, pre, OPENAI_CLIP, BICUBIC)
        size = pre.get("size", {"height": image_size, "width": image_size})
        self.tile = (size, size) if isinstance(size, int) else (size["height"], size["width"])
        self.min_tiles, self.max_tiles = int(pre.get("min_patches", 1)), int(pre.get("max_patches", 12))
        self.start, self.end = start, end

    def tiles(self, image: Image) -> tuple[list[Image], str]:
        th, tw = self.tile
        if self.max_tiles <= 1:
            tiles = [resize(image, th, tw, self.resample)]
        else:
            cols, rows = _tile_grid(image.height, image.width, th, tw, self.min_tiles, self.max_tiles)
            canvas = resize(image, rows * th, cols * tw, self.resample)
            tiles = [canvas.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th)) for r in range(rows) for c in range(cols)]
            if len(tiles) > 1:
                tiles.append(resize(image, th, tw, self.resample))
        return tiles, self.start + self.placeholder * (self.tokens_per_tile * len(tiles)) + self.end


def _tile_grid(height: int, width: int, tile_h: int, tile_w: int, least: int, most: int) -> tuple[int, int]:
    """``(columns, rows)`` of the grid whose aspect ratio is nearest the image's (transformers'
    ``get_optimal_tiled_canvas``: on a tie the grid with more tiles wins while the image covers more than half of it)."""
    grids = sorted(((w, h) for w in range(1, most + 1) for h in range(1, most + 1) if least <= w * h <= most),
                   key=lambda g: g[0] * g[1])
    ratio, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(ratio - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and area > 0.5 * tile_h * tile_w * grid[0] * grid[1]:
            best = grid
    return best


class Idefics3Processor(ImageProcessor):
    def __init__(self, placeholder: str, tokens_per_tile: int, pre: dict[str, Any], image_size: int):
        super().__init__(placeholder, tokens_per_tile, pre, IMAGENET_STANDARD, LANCZOS)
        self.longest = pre.get("size", {"longest_edge": 4 * image_size})["longest_edge"] if pre.get("do_resize", True) else None
        self.tile = pre.get("max_image_size", {"longest_edge": image_size})["longest_edge"]
        self.split = bool(pre.get("do_image_splitting", True))

    def tiles(self, image: Image) -> tuple[list[Image], str]:
        t = self.tile
        if self.longest:
            image = resize(image, *_longest_edge(image.height, image.width, self.longest), self.resample)
        if not self.split:
            return [resize(image, t, t, self.resample)], self._tile_text("<global-img>")
        image = resize(image, *_multiples_of(image.height, image.width, t), self.resample)
        rows, cols = image.height // t, image.width // t
        if rows * cols == 1:
            return [image], self._tile_text("<global-img>")
        tiles = [image.crop((c * t, r * t, (c + 1) * t, (r + 1) * t)) for r in range(rows) for c in range(cols)]
        tiles.append(resize(image, t, t, self.resample))
        grid = "".join("".join(self._tile_text(f"<row_{r + 1}_col_{c + 1}>", close=False) for c in range(cols)) + "\n"
                       for r in range(rows))
        return tiles, grid + "\n" + self._tile_text("<global-img>")

    def _tile_text(self, tag: str, close: bool = True) -> str:
        return "<fake_token_around_image>" + tag + self.placeholder * self.tokens_per_tile + ("<fake_token_around_image>" if close else "")


def _longest_edge(height: int, width: int, longest: int) -> tuple[int, int]:
    """Idefics3's first resize: the longest edge to ``longest`` (up or down), the other side even, then capped at 4096."""
    ratio = width / height
    if width >= height:
        width, height = longest, int(longest / ratio)
        height += height % 2
    else:
        height, width = longest, int(longest * ratio)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    if max(height, width) > MAX_IDEFICS3_SIDE:
        ratio = width / height  # of the resized sides, as transformers recomputes it
        if width >= height:
            width, height = MAX_IDEFICS3_SIDE, int(MAX_IDEFICS3_SIDE / ratio)
        else:
            height, width = MAX_IDEFICS3_SIDE, int(MAX_IDEFICS3_SIDE * ratio)
    return max(height, 1), max(width, 1)


def _multiples_of(height: int, width: int, tile: int) -> tuple[int, int]:
    """Idefics3's ``resize_for_vision_encoder``: both sides rounded up to multiples of ``tile``, keeping the ratio on the way."""
    ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / ratio) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * ratio) / tile) * tile
    return height, width


def build_processor(config: VLMConfig, pre: dict[str, Any], tokens: dict[str, str]) -> ImageProcessor:
    """The processor of ``config``'s family from a ``preprocessor_config.json`` dict (``{}``: the family's defaults at
    the tower's size) and the tokenizer's strings ``tokens`` (``image``; InternVL's ``start_image``/``end_image``)."""
    args = (tokens["image"], config.tokens_per_tile, pre, config.vision.image_size)
    if config.family == "llava":
        return LlavaProcessor(*args)
    if config.family == "internvl":
        return InternVLProcessor(*args, tokens.get("start_image", "<img>"), tokens.get("end_image", "</img>"))
    return Idefics3Processor(*args)
