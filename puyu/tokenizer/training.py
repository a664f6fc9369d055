"""Train a byte-level BPE tokenizer from scratch, with chat special tokens and a chat template.

Contract: ``train_tokenizer(texts, vocab_size)`` consumes an iterable of
documents once (streamed: the Hugging Face ``tokenizers`` trainer keeps word
counts, never the corpus) and returns a :class:`~puyu.tokenizer.Tokenizer`
whose ``save(folder)`` writes ``tokenizer.json`` + ``tokenizer_config.json``
that puyu (``Tokenizer.from_folder``) and ``transformers.AutoTokenizer`` load.

The pipeline is the one of current open models (Llama 3, Qwen2, SmolLM2):
NFC normalization; a pre-tokenizing split by the GPT-4 regex with single digits
(numbers tokenize digit by digit), and Chinese runs kept whole between
punctuation so BPE learns multi-character words; byte-level BPE over the 256
byte symbols, so no text is ever unknown.  Special tokens come first in the
vocabulary: ``<|endoftext|>`` (ends every pre-training document: the EOS),
``<|pad|>``, then those of the chat template (ChatML's ``<|im_start|>`` /
``<|im_end|>``, InternLM2's action tokens, or Llama 3's headers), each one id.
The training itself is the ``tokenizers`` Rust trainer (fast, multi-threaded):
only the choice of parts is puyu's.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from puyu.errors import ConfigError
from puyu.tokenizer.templates import BUILTIN_TEMPLATES
from puyu.tokenizer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

EOS, PAD = "<|endoftext|>", "<|pad|>"
# The GPT-4 / Llama 3 split, with \p{N} taken one digit at a time.
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEMPLATE_TOKENS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "internlm2": ["<s>", "<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>", "<|plugin|>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}
TEMPLATE_BOS = {"chatml": None, "internlm2": "<s>", "llama3": "<|begin_of_text|>"}


def special_tokens(template: str, extra: list[str] | None = None) -> list[str]:
    """The special tokens of a tokenizer for ``template``, in vocabulary order (ids 0, 1, ...)."""
    if template not in TEMPLATE_TOKENS:
        raise ConfigError(f"chat template {template!r} is unknown; use one of {', '.join(TEMPLATE_TOKENS)}")
    return list(dict.fromkeys([EOS, PAD, *TEMPLATE_TOKENS[template], *(extra or [])]))


def new_bpe() -> HFTokenizer:
    """An untrained byte-level BPE with puyu's normalizer, pre-tokenizer, decoder and post-processor."""
    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, template: str = "chatml", min_frequency: int = 2,
                    max_token_length: int | None = 16, extra_special_tokens: list[str] | None = None,
                    show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (see the module docstring).

    Args:
        texts: documents, consumed once.
        vocab_size: size of the vocabulary, special tokens and the 256 byte symbols included.
        template: chat template (and its special tokens): ``chatml``, ``internlm2`` or ``llama3``.
        min_frequency: a merge must occur at least this often.
        max_token_length: longest token in characters (None: no limit); keeps long Chinese runs from
            becoming single tokens.
        extra_special_tokens: more special tokens (e.g. tool-call tags), each kept as one id.
        show_progress: the trainer's own progress bars.

    Raises:
        ConfigError: a vocabulary too small for the bytes and special tokens, an unknown template, no text.
    """
    specials = special_tokens(template, extra_special_tokens)
    floor = 256 + len(specials) + 1
    if vocab_size < floor:
        raise ConfigError(f"vocab_size {vocab_size} is too small: the 256 byte symbols and {len(specials)} special tokens "
                          f"need at least {floor}; use e.g. 8192 for a small model")
    counted = _Counted(texts)
    tok = new_bpe()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=max_token_length,
                                  show_progress=show_progress)
    tok.train_from_iterator(counted, trainer)
    if counted.documents == 0:
        raise ConfigError("the tokenizer corpus has no text; check the files and the text field name")
    log.info("trained a %d-token BPE on %d documents (%.1f MB of text)", tok.get_vocab_size(), counted.documents,
             counted.chars / 1e6)
    if tok.get_vocab_size() < vocab_size:
        log.warning("the corpus gave only %d tokens (asked %d): it is too small or min_frequency=%d too high",
                    tok.get_vocab_size(), vocab_size, min_frequency)
    return Tokenizer(tok, bos_token=TEMPLATE_BOS[template], eos_token=EOS, pad_token=PAD,
                     chat_template=BUILTIN_TEMPLATES[template])


class _Counted:
    """Iterates ``texts`` once, counting documents and characters, skipping blank ones."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.documents, self.chars = texts, 0, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            if text and text.strip():
                self.documents += 1
                self.chars += len(text)
                yield text
