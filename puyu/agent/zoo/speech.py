"""``speak``: text to speech, written as a WAV file with eSpeak NG.

Why pyttsx3: the well-kept offline TTS binding whose ``espeak`` driver calls libespeak-ng
(Debian's ``espeak-ng`` package, which the set-up installs) and writes WAV files; no model to
download.  The driver prints a line when it saves, so the call runs with stdout sent to stderr
(``puyu mcp`` speaks its protocol on stdout).
"""

from __future__ import annotations

import contextlib
import sys
import wave
from typing import Literal

from puyu.agent.folder import Folder
from puyu.agent.tools import Tool

VOICES = {"en": "gmw/en", "zh": "sit/cmn"}


def speech_tool(folder: Folder) -> Tool:
    """The speech tool, writing WAV files into ``folder``."""

    def speak(text: str, path: str, language: Literal["en", "zh"] = "en") -> str:
        """Speak a text aloud into a WAV audio file.

        Args:
            text: what to say.
            path: the WAV file to write, relative to the allowed folder (e.g. hello.wav).
            language: en (English) or zh (Mandarin Chinese).
        """
        import pyttsx3

        if not text.strip():
            raise ValueError("there is no text to speak")
        target = folder.writable(path, (".wav",))
        try:
            engine = pyttsx3.init("espeak")
        except (OSError, RuntimeError) as e:
            raise RuntimeError(f"eSpeak NG is not installed ({e}); install Debian's espeak-ng package") from None
        engine.setProperty("voice", VOICES[language])
        with contextlib.redirect_stdout(sys.stderr):
            engine.save_to_file(text, str(target))
            engine.runAndWait()
        with wave.open(str(target)) as audio:
            rate, frames = audio.getframerate(), audio.getnframes()
        return f"wrote {target.relative_to(folder.base)}: {frames / rate:.1f} s of speech at {rate} Hz"

    return Tool(speak, effects={"writes_files"})
