"""The one folder file tools may touch: paths are resolved inside it, links out of it refused.

:class:`Folder` is how ``read_file`` and the zoo's file tools (OCR, speech, image operations)
confine themselves to ``--files DIR``: a path is taken relative to the folder, resolved
(``..`` and symbolic links followed) and refused with :class:`PermissionError` when the result
lies outside; a missing file is a :class:`FileNotFoundError` that lists what the folder holds.
"""

from __future__ import annotations

from pathlib import Path

from puyu.errors import ConfigError


class Folder:
    """A folder that tools read from and write to.

    Args:
        root: the folder; it must exist.
        tool: the tool that needs it (named in the error when it is missing).
    """

    def __init__(self, root: str | Path, tool: str = "this tool"):
        self.base = Path(root).expanduser().resolve()
        if not self.base.is_dir():
            raise ConfigError(f"the folder {root} for {tool} does not exist; create it or pass another --files folder")

    def path(self, relative: str) -> Path:
        """``relative`` resolved inside the folder (it need not exist)."""
        target = (self.base / relative).resolve()
        if not target.is_relative_to(self.base):
            raise PermissionError(f"{relative!r} is outside the allowed folder")
        return target

    def existing(self, relative: str) -> Path:
        """``relative`` resolved inside the folder; it must be a file."""
        target = self.path(relative)
        if not target.is_file():
            listing = ", ".join(sorted(p.name for p in self.base.iterdir())[:50])
            raise FileNotFoundError(f"no file {relative!r}; the folder holds: {listing or 'nothing'}")
        return target

    def writable(self, relative: str, suffixes: tuple[str, ...]) -> Path:
        """``relative`` resolved inside the folder as a new file with one of ``suffixes``; parent folders are made."""
        target = self.path(relative)
        if target.suffix.lower() not in suffixes:
            raise ValueError(f"{relative!r} must end with {' or '.join(suffixes)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
