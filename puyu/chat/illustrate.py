"""Illustrated writing (InternLM-XComposer's article-with-pictures demo): an article on a topic, with the user's own
pictures placed where they fit.

Contract::

    article = illustrate(vlm_llm, "Autumn in Kyoto", image_paths, writer=None, paragraphs=5, temperature=0.7)
    article.markdown(relative_to=out_folder)     # "# Autumn in Kyoto", paragraphs, ![caption](path) after the ones they fit
    article.placements                           # [(image index, paragraph index, fit in nats)]
    article.unplaced                             # images that fit no paragraph better than no paragraph at all

The steps are XComposer2's (write, then decide where pictures go, then pick them), with the pictures coming from a
local folder instead of a retrieval index:

1. :func:`caption_images`: the vision-language model describes each picture in one sentence (greedy).
2. :func:`write_article`: the writer (the same model, or another text model) drafts the paragraphs, told which
   pictures will illustrate them (with a loop guard and a mild repetition penalty, and any loop trimmed: small
   models drift into repeating themselves over a long text).
3. :func:`place_images`: the writer scores every (paragraph, picture) pair by how much the paragraph raises the
   probability of the picture's caption: ``log p(caption | paragraph) - log p(caption | no paragraph)``, summed over
   the caption's tokens (pointwise mutual information, so a long or generic caption gains nothing by being long or
   generic).  Pairs are taken strongest first, one picture per paragraph and one paragraph per picture; a picture
   whose best fit is not positive is left out.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from puyu.errors import ConfigError
from puyu.generation.loop_guard import trim_loop

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
CAPTION_PROMPT = "Describe this picture in one sentence."
LOOP_GUARD = 6  # words per repeated run that end the article (puyu.generation.loop_guard)
FIT_PROMPT = "Paragraph: {paragraph}\nA picture that illustrates this paragraph shows: "


@dataclass
class Article:
    """A written article and where its pictures go (see the module docstring)."""

    topic: str
    paragraphs: list[str]
    images: list[Path]
    captions: list[str]
    placements: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def unplaced(self) -> list[Path]:
        placed = {i for i, _, _ in self.placements}
        return [p for i, p in enumerate(self.images) if i not in placed]

    def markdown(self, relative_to: str | Path | None = None) -> str:
        """The article as Markdown; image links are relative to ``relative_to`` (the output's folder) when given."""
        after = {paragraph: image for image, paragraph, _ in self.placements}
        lines = [] if self.paragraphs and self.paragraphs[0].startswith("#") else [f"# {self.topic}", ""]
        for p, text in enumerate(self.paragraphs):
            lines += [text, ""]
            if p in after:
                image = self.images[after[p]]
                link = os.path.relpath(image, relative_to) if relative_to is not None else str(image)
                alt = " ".join(re.sub(r"[\[\]]", " ", self.captions[after[p]]).split())
                lines += [f"![{alt}]({Path(link).as_posix().replace(' ', '%20')})", ""]
        return "\n".join(lines).rstrip() + "\n"


def image_files(folder: str | Path) -> list[Path]:
    """The pictures in ``folder`` (by suffix, sorted by name).

    Raises:
        ConfigError: not a folder, or no pictures in it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--images {folder} is not a folder; give the folder that holds the pictures")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ConfigError(f"{folder} holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
    return found


def caption_images(llm, images: list[Path], progress: Callable[[int, int], None] | None = None) -> tuple[list[Path], list[str]]:
    """One-sentence captions of ``images`` by the vision-language ``llm``; pictures it cannot read are skipped with a
    warning.  Returns the pictures kept and their captions.

    Raises:
        ConfigError: ``llm`` reads text only, or no picture could be read.
    """
    if not llm.takes_images:
        raise ConfigError(f"{llm.name} reads text only; captioning the pictures needs a vision-language model "
                          "(LLaVA, InternVL, SmolVLM/Idefics3 folders); --writer may still name a text model")
    kept, captions = [], []
    for n, path in enumerate(images):
        message = [{"role": "user", "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": CAPTION_PROMPT}]}]
        try:
            caption = llm.chat(message, temperature=0, max_new_tokens=48)
            kept.append(path)
            captions.append(first_sentence(caption) or path.stem.replace("_", " "))
        except ConfigError as exc:
            log.warning("skipped %s: %s", path.name, exc)
        if progress:
            progress(n + 1, len(images))
    if not kept:
        raise ConfigError("none of the pictures could be read (see the warnings above)")
    return kept, captions


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (to 200 characters), without surrounding whitespace."""
    text = " ".join(text.split())
    match = re.search(r"(.+?[.!?。！？])(\s|$)", text)
    return (match.group(1) if match else text)[:200]


def write_article(writer, topic: str, captions: list[str], paragraphs: int = 5, **sampling: Any) -> list[str]:
    """The article's paragraphs on ``topic`` by the text model ``writer`` (empty lines separate them; at most
    ``paragraphs``, the last one ending at a full sentence).

    Raises:
        ConfigError: the model wrote nothing.
    """
    pictures = "\n".join(f"- {c}" for c in captions)
    request = (f"Write an article about: {topic}\nWrite {paragraphs} paragraphs separated by empty lines, no title. "
               f"The article will be illustrated with these pictures:\n{pictures}")
    sampling.setdefault("max_new_tokens", 160 * paragraphs)
    sampling.setdefault("loop_guard", LOOP_GUARD)  # small models drift into repeating themselves in long text
    sampling.setdefault("repetition_penalty", 1.1)
    text = trim_loop(writer.chat([{"role": "user", "content": request}], **sampling), sampling["loop_guard"])
    parts = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(parts) < 2:
        parts = [p.strip() for p in text.splitlines() if p.strip()]
    parts = parts[:paragraphs]
    if parts and not re.search(r"[.!?。！？\"')\]]$", parts[-1]):  # cut off by max_new_tokens: end at its last full sentence
        ends = [m.end() for m in re.finditer(r"[.!?。！？](?=\s)", parts[-1])]
        parts[-1] = parts[-1][: ends[-1]] if ends else parts[-1]
    if not parts:
        raise ConfigError(f"{writer.name} wrote nothing about {topic!r}; try another --temperature or a larger --writer")
    return parts


@torch.inference_mode()
def caption_logprob(writer, context: str, caption: str) -> float:
    """``log p(caption | context)`` under the text model ``writer``, summed over the caption's tokens."""
    tokenizer, model = writer.tokenizer, writer.model
    prefix = tokenizer.encode(context)
    target = tokenizer.encode(caption, add_special_tokens=False)
    ids = torch.tensor([prefix + target], device=model.device)
    logits = model(ids, logits_to_keep=len(target) + 1)[0, :-1].float()
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(target, device=logits.device)[:, None]).sum())


def place_images(writer, paragraphs: list[str], captions: list[str]) -> list[tuple[int, int, float]]:
    """``[(image, paragraph, fit)]``: each picture after the paragraph its caption fits best (see the module
    docstring), strongest pairs first, at most one picture per paragraph; fits are in nats."""
    baseline = [caption_logprob(writer, FIT_PROMPT.format(paragraph=""), " " + c) for c in captions]
    fits = [(caption_logprob(writer, FIT_PROMPT.format(paragraph=p), " " + c) - baseline[i], i, j)
            for j, p in enumerate(paragraphs) if not p.startswith("#") for i, c in enumerate(captions)]
    placed: list[tuple[int, int, float]] = []
    used_images, used_paragraphs = set(), set()
    for fit, i, j in sorted(fits, key=lambda f: (-f[0], f[1], f[2])):
        if fit > 0 and i not in used_images and j not in used_paragraphs:
            placed.append((i, j, fit))
            used_images.add(i)
            used_paragraphs.add(j)
    return sorted(placed, key=lambda p: p[1])


def illustrate(llm, topic: str, images: list[Path], writer=None, paragraphs: int = 5,
               progress: Callable[[str, int, int], None] | None = None, **sampling: Any) -> Article:
    """Caption, write and place (see the module docstring); ``writer`` defaults to ``llm``."""
    if not topic.strip():
        raise ConfigError("the topic is empty; say what the article is about")
    if paragraphs < 1:
        raise ConfigError(f"--paragraphs must be at least 1, got {paragraphs}")
    writer = writer or llm
    kept, captions = caption_images(llm, images, (lambda done, total: progress("captions", done, total)) if progress else None)
    text = write_article(writer, topic, captions, paragraphs, **sampling)
    if progress:
        progress("article", 1, 1)
    return Article(topic, text, kept, captions, place_images(writer, text, captions))
