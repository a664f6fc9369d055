"""Chat messages with images -> what the language model prefills: token ids, and image vectors at their positions.

Contract::

    model, tokenizer = load_model(vlm_folder)              # model.image_input is an ImageInput (None: text only)
    ids, images = prompt_with_images(model, tokenizer, messages, tools)
    images.positions      # [n] prompt positions of the image placeholder tokens, every image's in order
    images.vectors()      # [n, hidden] their input vectors (the vision tower runs once, on first use)
    images.cache_keys(ids[:k])   # ids with each image position replaced by (pixel hash, index): prefix-cache keys

A message's ``content`` may be a list of parts: ``{"type": "text", "text": ...}``, ``{"type": "image", "path"
| "image": path, bytes or PIL image}`` or OpenAI's ``{"type": "image_url", "image_url": {"url": ...}}`` with a
``data:`` URL or a local path (``file://`` too).  The chat template renders the conversation (the one render path):
a template that walks content parts (the VLM families' own, ``{% if part['type'] == 'image' %}<image>``) gets them,
with the images as bare ``{"type": "image"}`` parts; any other template (the built-in ``chatml`` ...) gets text with
the model's placeholder where each image goes.  The processor then expands each placeholder into its image's
tokens.  Remote URLs are refused: nothing here fetches the internet.
Two prompts that show the same pixels at the same place share prefix-cache keys, so a second question about an
image reuses its keys and values; different images never do, although their placeholder ids are the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from puyu.errors import ConfigError

IMAGE_TYPES = ("image", "image_url")
FEATURE_CACHE_BYTES = 256 << 20  # vectors of recent images kept for reuse (see ImageInput)


def is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in IMAGE_TYPES


def has_images(messages: list[dict]) -> bool:
    """Whether any message carries an image part."""
    return any(isinstance(m.get("content"), list) and any(map(is_image_part, m["content"])) for m in messages)


def image_source(part: dict) -> Any:
    """The path, bytes or PIL image of one image part (``data:`` URLs decoded; remote URLs refused).

    Raises:
        ConfigError: the part names no image, or a URL that is neither ``data:`` nor local.
    """
    if part.get("type") == "image":
        source = part.get("image", part.get("path", part.get("url")))
    else:
        url = part.get("image_url")
        source = url.get("url") if isinstance(url, dict) else url
    if source is None:
        raise ConfigError(f"an image part needs 'path' (type image) or 'image_url': {{'url': ...}}; got keys {sorted(part)}")
    if isinstance(source, str):
        if source.startswith("data:"):
            header, _, payload = source.partition(",")
            if ";base64" not in header or not payload:
                raise ConfigError("an image data URL must be data:image/...;base64,<data>")
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError("the image data URL is not valid base64") from None
        if source.startswith(("http://", "https://", "ftp://")):
            raise ConfigError(f"remote image URLs are not fetched ({source[:60]}); send the image as a data: URL or a local path")
        return Path(source.removeprefix("file://")).expanduser()
    return source


def flatten_images(messages: list[dict], placeholder: str) -> tuple[list[dict], list[Any]]:
    """Messages whose list contents are text with ``placeholder`` where each image goes, and the images in order.

    An image followed by text gets a newline after its placeholder (``<image>\\nWhat is it?``, as the families'
    own chat templates write it).
    """
    flat, images = [], []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            flat.append(message)
            continue
        text = []
        for i, part in enumerate(content):
            if is_image_part(part):
                images.append(image_source(part))
                following = content[i + 1] if i + 1 < len(content) else None
                text.append(placeholder + ("\n" if isinstance(following, dict) and following.get("type") == "text" else ""))
            elif isinstance(part, dict) and part.get("type") == "text":
                text.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ConfigError(f"message content part of type {kind!r} is not supported; use text, image or image_url parts")
        flat.append({**message, "content": "".join(text)})
    return flat, images


@dataclass
class PromptImages:
    """The images of one tokenized prompt (see the module docstring)."""

    positions: torch.Tensor
    keys: list[tuple[str, int]]  # per image position: (its image's pixel hash, index within that image)
    pixels: torch.Tensor  # every image's tiles, in order
    images: list[tuple[str, torch.Tensor]]  # per image: its pixel hash and tiles
    encode: Callable[[str, torch.Tensor], torch.Tensor]  # (hash, tiles) -> [tokens, hidden]
    _vectors: torch.Tensor | None = field(default=None, repr=False)

    def vectors(self) -> torch.Tensor:
        """``[len(positions), hidden]`` input vectors of the image tokens (computed once)."""
        if self._vectors is None:
            with torch.inference_mode():
                self._vectors = torch.cat([self.encode(digest, tiles) for digest, tiles in self.images])
        return self._vectors

    def cache_keys(self, tokens: list[int]) -> list:
        """``tokens`` (a prefix of the prompt) with image positions replaced by their pixel keys."""
        keyed = list(tokens)
        for position, key in zip(self.positions.tolist(), self.keys):
            if position < len(keyed):
                keyed[position] = key
        return keyed

    def scatter(self, embeds: torch.Tensor, start: int, end: int, offset: int) -> None:
        """Write the vectors of the image tokens at prompt positions ``[start, end)`` into ``embeds`` rows
        ``offset + (position - start)`` (``embeds``: ``[rows, hidden]``)."""
        inside = (self.positions >= start) & (self.positions < end)
        if bool(inside.any()):
            rows = self.positions[inside] - start + offset
            embeds[rows.to(embeds.device)] = self.vectors()[inside.to(self._vectors.device)].to(embeds.dtype)


class ImageInput:
    """What a vision-language model adds in front of its language model: the processor and the vision encoder.

    The vectors of recent images are kept (by pixel hash, up to :data:`FEATURE_CACHE_BYTES`): when a second question
    about an image finds only part of its tokens in the prefix cache (blocks need not end where the image does), the
    rest is prefilled without running the vision tower again.
    """

    def __init__(self, vlm, processor):
        self.vlm, self.processor = vlm, processor
        self.image_token_id = vlm.config.image_token_id
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # the engine thread and a caller's thread may both encode

    def encode(self, digest: str, tiles: torch.Tensor) -> torch.Tensor:
        """``[tiles x tokens per tile, hidden]`` input vectors of one image's ``tiles``."""
        with self._lock:
            if digest in self._features:
                self._features.move_to_end(digest)
                return self._features[digest]
            features = self.vlm.image_features(tiles)
            vectors = features.reshape(-1, features.shape[-1])
            self._features[digest] = vectors
            while sum(v.nbytes for v in self._features.values()) > FEATURE_CACHE_BYTES and len(self._features) > 1:
                self._features.popitem(last=False)
            return vectors

    @property
    def placeholder(self) -> str:
        """The text that marks where an image goes in a rendered chat."""
        return self.processor.placeholder

    def template_messages(self, tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[Any]]:
        """:func:`template_messages` with this model's placeholder (training data: :mod:`puyu.data.packing`)."""
        return template_messages(tokenizer, messages, tools, self.placeholder)

    def expansion(self, source: Any) -> str:
        """The prompt text that stands for one image (path, bytes or PIL image)."""
        return self.processor.preprocess(source).text

    def pixels(self, sources: list[Any]) -> torch.Tensor:
        """``[tiles, 3, S, S]``: every tile of ``sources``, in order."""
        return torch.cat([self.processor.preprocess(s).pixels for s in sources])

    def prepare(self, text: str, images: list[Any], tokenizer) -> tuple[list[int], PromptImages | None]:
        """Token ids of a rendered ``text`` whose placeholders stand for ``images``, and their :class:`PromptImages`."""
        prompt = self.processor.expand(text, images)
        ids = tokenizer.encode(prompt.text, add_special_tokens=False)
        if not images:
            return ids, None
        positions = torch.tensor([i for i, t in enumerate(ids) if t == self.image_token_id], dtype=torch.long)
        keys, per_image = [], []
        for image in prompt.images:
            digest = hashlib.sha256(image.pixels.contiguous().numpy().tobytes()).hexdigest()
            keys += [(digest, j) for j in range(image.pixels.shape[0] * self.processor.tokens_per_tile)]
            per_image.append((digest, image.pixels))
        if len(keys) != len(positions):
            raise ConfigError(f"the prompt has {len(positions)} image tokens but its images fill {len(keys)}; "
                              "a message's text must not contain the model's image token itself")
        return ids, PromptImages(positions, keys, prompt.pixels, per_image, self.encode)


def prompt_with_images(model, tokenizer, messages: list[dict], tools: list[dict] | None = None,
                       add_generation_prompt: bool = True) -> tuple[list[int], PromptImages | None]:
    """Token ids of a conversation and its images (``None`` when it has none), ready for the assistant's reply.

    Raises:
        ConfigError: images sent to a text-only model, or a bad image part.
    """
    image_input: ImageInput | None = getattr(model, "image_input", None)
    if image_input is None and not has_images(messages):
        return tokenizer.render(flatten_images(messages, "")[0], tools, add_generation_prompt=add_generation_prompt).ids, None
    if image_input is None:
        raise ConfigError("this model reads text only and the messages hold images; load a vision-language model "
                          "(LLaVA, InternVL, SmolVLM/Idefics3 folders) to ask about images")
    shown, images = template_messages(tokenizer, messages, tools, image_input.processor.placeholder)
    return image_input.prepare(tokenizer.render_text(shown, tools, add_generation_prompt=add_generation_prompt), images, tokenizer)


def template_messages(tokenizer, messages: list[dict], tools, placeholder: str) -> tuple[list[dict], list[Any]]:
    """The messages as the chat template renders images, and the images in order.

    A template that walks content parts gets them, images as bare ``{"type": "image"}`` parts, when its rendering
    shows one ``placeholder`` per image and every text part; any other (it printed the list, or failed on it) gets
    :func:`flatten_images`' text contents.
    """
    flat, images = flatten_images(messages, placeholder)
    parts_messages, texts = [], []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and message.get("role") != "tool":
            content = [{"type": "text", "text": content}]  # these templates walk parts in text-only turns too
        if isinstance(content, list):
            content = [{"type": "image"} if is_image_part(p) else {"type": "text", "text": str(p.get("text", ""))} for p in content]
            texts += [p["text"] for p in content if p["type"] == "text"]
        parts_messages.append({**message, "content": content})
    try:
        text = tokenizer.render_text(parts_messages, tools, add_generation_prompt=True)
    except Exception:  # a template written for string contents may fail on lists in any way
        return flat, images
    if text.count(placeholder) != len(images) or "'type'" in text or not all(t in text for t in texts):
        return flat, images
    return parts_messages, images
