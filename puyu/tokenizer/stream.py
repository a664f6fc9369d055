"""Incremental detokenization for streaming.

Byte-level tokens can end in the middle of a UTF-8 character (Chinese text,
emoji), and some decoders change a token's text depending on its left
neighbour.  :class:`StreamDecoder` decodes a small window of recent tokens,
holds text back while it ends in an incomplete character (``\\ufffd``), and
returns only the new, stable characters; the concatenation of its deltas plus
:meth:`StreamDecoder.flush` equals ``tokenizer.decode(all_ids)``.
"""

from __future__ import annotations

from puyu.tokenizer.tokenizer import Tokenizer


class StreamDecoder:
    """Feed ids one by one with :meth:`push`; each call returns the text that became final."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window (context for the decoder)
        self._read = 0  # ids before this were already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        done = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(done) :]
