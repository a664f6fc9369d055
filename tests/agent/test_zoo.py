"""The tool zoo on real inputs: OCR of rendered English and Chinese text, speech to WAV, image operations,
plots from the python tool carried by the agent's steps, and effects that keep tools off unless allowed."""

from __future__ import annotations

import base64
import wave

import pytest
from PIL import Image, ImageDraw, ImageFont

from puyu.agent import Agent, builtin_tools
from puyu.errors import ConfigError
from tests.agent.fakes import ScriptedModel, call

CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"  # Debian's fonts-wqy-zenhei (.ci/run installs it)


def _render(path, text: str) -> None:
    font = ImageFont.truetype(CJK_FONT, 36)
    image = Image.new("RGB", (40 + 36 * len(text), 80), "white")
    ImageDraw.Draw(image).text((20, 18), text, fill="black", font=font)
    image.save(path)


def test_ocr_reads_english_and_chinese_lines(tmp_path):
    _render(tmp_path / "en.png", "Invoice total 42 dollars")
    _render(tmp_path / "zh.png", "已知二加三等于五")
    ocr = builtin_tools(["ocr"], files=tmp_path, allow=["heavy"]).tools["ocr"]
    assert ocr.run({"path": "en.png"}).output.lower().split() == ["invoice", "total", "42", "dollars"]
    assert ocr.run({"path": "zh.png"}).output.replace(" ", "") == "已知二加三等于五"
    assert "outside the allowed folder" in ocr.run({"path": "../secret.png"}).error
    with pytest.raises(ConfigError, match=r"'ocr' loads a large model or runs long; it is off unless you allow it \(--allow heavy\)"):
        builtin_tools(["ocr"], files=tmp_path)


@pytest.mark.parametrize("text, language", [("Hello from puyu, the agent toolkit.", "en"), ("你好，我是一个智能体。", "zh")])
def test_speak_writes_a_wav_of_plausible_length(tmp_path, text, language):
    speak = builtin_tools(["speak"], files=tmp_path, allow=["writes_files"]).tools["speak"]
    result = speak.run({"text": text, "path": "out/hello.wav", "language": language})
    assert result.error is None and result.output.startswith("wrote out/hello.wav")
    with wave.open(str(tmp_path / "out" / "hello.wav")) as audio:
        seconds, frames = audio.getnframes() / audio.getframerate(), audio.readframes(audio.getnframes())
    assert 1.0 < seconds < 10.0 and audio.getframerate() >= 16000
    assert max(frames[1::2]) > 16  # not silence: the high bytes of 16-bit samples move
    assert "must end with .wav" in speak.run({"text": text, "path": "hello.mp3"}).error
    with pytest.raises(ConfigError, match=r"'speak' writes files; it is off unless you allow it \(--allow writes_files\)"):
        builtin_tools(["speak"], files=tmp_path)


def test_image_info_and_edit(tmp_path):
    Image.new("RGBA", (120, 80), (255, 0, 0, 128)).save(tmp_path / "red.png")
    tools = builtin_tools(["image_info", "image_edit"], files=tmp_path, allow=["writes_files"]).tools
    assert tools["image_info"].run({"path": "red.png"}).output == '{"width": 120, "height": 80, "mode": "RGBA", "format": "PNG"}'
    result = tools["image_edit"].run({"path": "red.png", "output": "small.jpg", "crop": [10, 10, 110, 60], "resize": [50, 25],
                                      "convert": "L"})
    assert result.output == "wrote small.jpg: 50x25 L"
    with Image.open(tmp_path / "small.jpg") as small:
        assert (small.size, small.mode, small.format) == ((50, 25), "L", "JPEG")
    assert result.images[0].mime == "image/jpeg" and result.images[0].data == (tmp_path / "small.jpg").read_bytes()
    bad = tools["image_edit"].run({"path": "red.png", "output": "x.png", "crop": [0, 0, 500, 10]})
    assert "crop must be [left, top, right, bottom] inside the 120x80 image" in bad.error
    assert "outside the allowed folder" in tools["image_edit"].run({"path": "red.png", "output": "../x.png"}).error
    (tmp_path / "notes.txt").write_text("hi")
    assert "is not an image Pillow can read" in tools["image_info"].run({"path": "notes.txt"}).error


def test_plots_from_the_python_tool_ride_on_the_agent_step():
    plot = ("import matplotlib.pyplot as plt\\nplt.plot([0, 1, 2], [0, 1, 4])\\nplt.title('squares')\\n"
            "plt.savefig('plots/squares.png')\\nprint('done')")
    model = ScriptedModel([call("python", '{"code": "import os\\nos.makedirs(\'plots\')"}'), call("python", f'{{"code": "{plot}"}}'),
                           call("python", '{"code": "print(1)"}'), "Here is the plot."])
    steps = list(Agent(model, builtin_tools(["python"]), protocol="function").stream("Plot y = x^2"))
    assert steps[0].images == steps[2].images == [] and steps[1].error is None  # only images this call saved
    (image,) = steps[1].images
    assert image.name == "plots/squares.png" and image.mime == "image/png" and image.data.startswith(b"\x89PNG")
    assert steps[1].output == "done\nsaved images: plots/squares.png"
    record = steps[1].to_dict()["images"][0]
    assert record["name"] == "plots/squares.png" and base64.b64decode(record["url"].split(",", 1)[1]) == image.data
