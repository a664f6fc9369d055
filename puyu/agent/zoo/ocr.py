"""``ocr``: the text in an image file, read line by line with RapidOCR.

Why RapidOCR (``rapidocr-onnxruntime``): PaddleOCR's detection, direction and recognition models
(Chinese and English) converted to ONNX ship inside the wheel, so it runs offline on a CPU with
ONNX Runtime; writing OCR by hand is not this project's business.  The engine loads once per
process (about 5 s) on the first call.  Boxes are grouped into lines by their vertical centre
and read left to right; Chinese pieces are joined without spaces, others with one.
"""

from __future__ import annotations

import functools
import re

from puyu.agent.folder import Folder
from puyu.agent.tools import Tool

CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


@functools.cache
def _engine():
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise RuntimeError("the ocr tool needs rapidocr-onnxruntime (pip install 'puyu[agent]'; its wheels cover "
                           "Python 3.6 to 3.12)") from None
    return RapidOCR()


def _lines(boxes: list) -> list[str]:
    """RapidOCR's ``[box, text, score]`` items as lines of text, top to bottom, left to right."""
    items = sorted(((min(p[1] for p in box) + max(p[1] for p in box)) / 2, min(p[0] for p in box),
                    max(p[1] for p in box) - min(p[1] for p in box), text) for box, text, _ in boxes)
    lines: list[list[tuple]] = []
    for item in items:
        if lines and abs(item[0] - lines[-1][0][0]) < max(item[2], lines[-1][0][2]) / 2:
            lines[-1].append(item)
        else:
            lines.append([item])
    out = []
    for line in lines:
        text = ""
        for _, _, _, piece in sorted(line, key=lambda i: i[1]):
            joined = text and not (CJK.search(text[-1]) or CJK.search(piece[0]))
            text += (" " if joined else "") + piece
        out.append(text)
    return out


def ocr_tool(folder: Folder) -> Tool:
    """The OCR tool over images in ``folder``."""

    def ocr(path: str) -> str:
        """Read the text in an image file (PNG, JPEG ...), in English or Chinese; returns it line by line.

        Args:
            path: the image's path relative to the allowed folder.
        """
        image = folder.existing(path)
        boxes, _ = _engine()(str(image))
        return "\n".join(_lines(boxes or [])) or "(no text found)"

    return Tool(ocr, effects={"heavy"})
