"""The tool zoo (AgentLego's role): offline tools beyond the built-ins, each a :class:`~puyu.agent.tools.Tool`.

- ``ocr`` (:mod:`.ocr`): text in an image file (RapidOCR on ONNX Runtime; the wheel ships its models);
- ``speak`` (:mod:`.speech`): text to a WAV file (the eSpeak NG program);
- ``image_info`` / ``image_edit`` (:mod:`.images`): size and mode of an image; crop, resize, convert (Pillow).

Plots come from the ``python`` tool: images it saves are returned with its output.  Every zoo tool
works on files in one :class:`~puyu.agent.folder.Folder` (``--files DIR``), needs no network and no
download, and declares its effects: ``ocr`` is ``heavy`` (loads ONNX models, seconds per image),
``speak`` and ``image_edit`` write files; such tools are built only when allowed (``--allow``).
:data:`ZOO` maps each name to its factory, which takes the folder.
"""

from puyu.agent.zoo.images import image_edit_tool, image_info_tool
from puyu.agent.zoo.ocr import ocr_tool
from puyu.agent.zoo.speech import speech_tool

ZOO = {"ocr": ocr_tool, "speak": speech_tool, "image_info": image_info_tool, "image_edit": image_edit_tool}

__all__ = ["ZOO", "image_edit_tool", "image_info_tool", "ocr_tool", "speech_tool"]
