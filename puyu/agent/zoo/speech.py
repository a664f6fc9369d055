"""``speak``: text to speech, written as a WAV file with eSpeak NG.

eSpeak NG (Debian's ``espeak-ng`` package, which the set-up installs) speaks English and Mandarin
offline with no model to download.  It runs as its own program (``espeak-ng --stdin -w FILE``),
the text on stdin so that it can never be read as an option.  Why not a Python binding: pyttsx3's
espeak driver (2.99) writes the file from a callback racing its own event loop, and a second
call in one process intermittently returned before the file existed; the program either wrote
the file or says why, and a timeout bounds it.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from typing import Literal

from puyu.agent.folder import Folder
from puyu.agent.tools import Tool

VOICES = {"en": "gmw/en", "zh": "sit/cmn"}
TIMEOUT_S = 60.0


def speech_tool(folder: Folder) -> Tool:
    """The speech tool, writing WAV files into ``folder``."""

    def speak(text: str, path: str, language: Literal["en", "zh"] = "en") -> str:
        """Speak a text aloud into a WAV audio file.

        Args:
            text: what to say.
            path: the WAV file to write, relative to the allowed folder (e.g. hello.wav).
            language: en (English) or zh (Mandarin Chinese).
        """
        if not text.strip():
            raise ValueError("there is no text to speak")
        target = folder.writable(path, (".wav",))
        program = shutil.which("espeak-ng")
        if program is None:
            raise RuntimeError("eSpeak NG is not installed; install Debian's espeak-ng package (apt-get install espeak-ng)")
        done = subprocess.run([program, "--stdin", "-v", VOICES[language], "-w", str(target)], input=text.encode(),
                              capture_output=True, timeout=TIMEOUT_S)
        if done.returncode != 0 or not target.is_file():
            raise RuntimeError(f"espeak-ng failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()[:300]}")
        with wave.open(str(target)) as audio:
            rate, frames = audio.getframerate(), audio.getnframes()
        return f"wrote {target.relative_to(folder.base)}: {frames / rate:.1f} s of speech at {rate} Hz"

    return Tool(speak, effects={"writes_files"})
