"""A ``tokenizers`` tokenizer from a SentencePiece ``tokenizer.model`` (InternLM v1/2/2.5/3, Llama 2, Mistral v0.1).

Contract: :func:`backend_from_sentencepiece` ``(folder) -> tokenizers.Tokenizer`` encodes text as the folder's
slow ``transformers`` tokenizer does (the remote-code ``InternLM2Tokenizer`` and ``LlamaTokenizer(legacy=True)``
work this way): the text is split at the added tokens of ``tokenizer_config.json`` (``added_tokens_decoder``,
the bos/eos/unk/pad and additional special tokens) and ``added_tokens.json``, and each piece in between is
encoded exactly as ``SentencePieceProcessor.encode`` encodes it.  BOS/EOS are added as ``add_bos_token`` /
``add_eos_token`` say.  The model's own settings are followed: BPE (merges ranked by piece score) or Unigram,
byte fallback, the normalizer's precompiled character map, extra-whitespace removal, dummy prefix and
whitespace escaping, and user-defined pieces, which SentencePiece keeps whole.  Not handled (a clear error):
``treat_whitespace_as_suffix`` models and model types other than BPE and Unigram.  A ``"legacy": false``
config (some Llama 2 folders; they also ship a ``tokenizer.json``, which is used first) is encoded legacy-style,
with a warning: the two differ only in the dummy-prefix space of text right after a special token.

:func:`tokenizer_from_gguf_metadata` builds the same from a GGUF's SentencePiece vocabulary (llama.cpp's
``llama`` tokenizer model: pieces, scores and types in the metadata), encoding as llama.cpp does.

Why by hand: ``tokenizers``' own SentencePiece classes train new models or read Unigram ones only and ignore
the normalizer spec, and ``transformers``' converters would make all of ``transformers`` a run-time dependency;
so the model proto, read with the ``sentencepiece`` package's own schema, is mapped onto ``tokenizers`` parts.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from puyu.errors import ModelLoadError

_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4
_UNIGRAM, _BPE = 1, 2
log = logging.getLogger(__name__)
_INSTALL = "pip install 'puyu[zoo]'  (sentencepiece and protobuf)"


def read_model_proto(path: Path) -> Any:
    """The ``ModelProto`` of a SentencePiece model file."""
    try:
        from google.protobuf.message import DecodeError
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise ModelLoadError(f"{path} is a SentencePiece model; reading it needs the zoo extra: {_INSTALL}") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise ModelLoadError(f"cannot read {path} as a SentencePiece model ({exc}); download it again") from None
    if not proto.pieces:
        raise ModelLoadError(f"{path} holds no SentencePiece vocabulary; download it again")
    return proto


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges the adjacent pair whose joined piece scores highest: rank every split of every
    normal piece by that piece's score (then id), so ``tokenizers``' rank order picks the same pair."""
    normal = {piece: (score, i) for i, (piece, score, kind) in enumerate(pieces) if kind == _NORMAL}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            if piece[:cut] in normal and piece[cut:] in normal:
                ranked.append((-score, i, piece[:cut], piece[cut:]))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def tokenizer_from_proto(proto: Any, name: str = "tokenizer.model") -> Tokenizer:
    """A tokenizer that encodes like ``SentencePieceProcessor`` (no added tokens or BOS yet)."""
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    if trainer.treat_whitespace_as_suffix:
        raise ModelLoadError(f"{name}: SentencePiece models with treat_whitespace_as_suffix are not supported")
    if trainer.model_type not in (_BPE, _UNIGRAM):
        raise ModelLoadError(f"{name}: SentencePiece model type {trainer.model_type} is not supported (BPE and Unigram are)")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    return _build(pieces, bpe=trainer.model_type == _BPE, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback,
                  charsmap=spec.precompiled_charsmap, remove_extra_whitespaces=spec.remove_extra_whitespaces,
                  add_dummy_prefix=spec.add_dummy_prefix, escape_whitespaces=spec.escape_whitespaces, isolate_user_defined=True)


def tokenizer_from_gguf_metadata(meta: dict) -> Tokenizer:
    """A tokenizer from a GGUF's SentencePiece vocabulary (``tokenizer.ggml.model == "llama"``: InternLM2/2.5, Llama 2,
    Mistral v0.1 GGUFs), encoding as llama.cpp does: byte-fallback BPE by piece score, a space prefix
    (``add_space_prefix``) on the text before and after each control or user-defined token, BOS/EOS as the file says."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    tok = _build(list(zip(tokens, scores, types)), bpe=True, unk_id=int(meta.get("tokenizer.ggml.unknown_token_id", 0)), byte_fallback=True,
                 add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)), isolate_user_defined=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    _add_bos_eos(tok, token("bos"), token("eos"), bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                 bool(meta.get("tokenizer.ggml.add_eos_token", False)))
    return tok


def _build(pieces: list[tuple[str, float, int]], *, bpe: bool, unk_id: int, byte_fallback: bool, charsmap: bytes = b"",
           remove_extra_whitespaces: bool = False, add_dummy_prefix: bool = True, escape_whitespaces: bool = True,
           isolate_user_defined: bool) -> Tokenizer:
    """The model, normalizer and decoder of a SentencePiece vocabulary ``[(piece, score, type)]``."""
    user_defined = sorted((piece for piece, _, kind in pieces if kind == _USER_DEFINED), key=len, reverse=True)
    isolate = isolate_user_defined and bool(user_defined)
    if bpe:
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        # ignore_merges: an isolated user-defined piece is emitted whole (it has no merges)
        model = models.BPE(vocab, _bpe_merges(pieces), unk_token=pieces[unk_id][0], fuse_unk=True, byte_fallback=byte_fallback,
                           ignore_merges=isolate)
    else:
        model = models.Unigram([(piece, score) for piece, score, _ in pieces], unk_id=unk_id, byte_fallback=byte_fallback)
    tok = Tokenizer(model)
    steps: list[normalizers.Normalizer] = []
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    if remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))  # Prepend leaves an empty piece empty, as SentencePiece does
    if escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    if isolate:  # matched on the normalized text and kept whole, as SentencePiece's prefix matcher does
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(re.escape(p) for p in user_defined)), behavior="isolated")
    steps_out: list[decoders.Decoder] = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_dummy_prefix:
        steps_out.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps_out)
    return tok


def _add_bos_eos(tok: Tokenizer, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool) -> None:
    """A post-processor that adds BOS and/or EOS around each sequence (none when neither is added)."""
    head = [bos] if add_bos and bos else []
    tail = [eos] if add_eos and eos else []
    if not (head or tail):
        return

    def seq(part: str, type_id: int) -> str:
        return " ".join([f"{t}:{type_id}" for t in head] + [f"{part}:{type_id}"] + [f"{t}:{type_id}" for t in tail])

    tok.post_processor = processors.TemplateProcessing(single=seq("$A", 0), pair=f"{seq('$A', 0)} {seq('$B', 1)}",
                                                       special_tokens=[(t, tok.token_to_id(t)) for t in dict.fromkeys(head + tail)])


def _content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _added_tokens(folder: Path, config: dict) -> list[tuple[int | None, AddedToken]]:
    """``(id or None, token)`` of every token the slow tokenizer splits the text at, in id order."""
    found: dict[str, tuple[int | None, AddedToken]] = {}
    for key, entry in sorted((config.get("added_tokens_decoder") or {}).items(), key=lambda kv: int(kv[0])):
        flags = {k: bool(entry.get(k)) for k in ("lstrip", "rstrip", "single_word", "normalized")}
        found[entry["content"]] = (int(key), AddedToken(entry["content"], special=bool(entry.get("special", True)), **flags))
    extra = folder / "added_tokens.json"
    if extra.exists():
        for content, i in sorted(json.loads(extra.read_text()).items(), key=lambda kv: kv[1]):
            found.setdefault(content, (int(i), AddedToken(content, special=True, normalized=False)))
    named = [_content(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    for content in named + [_content(t) for t in config.get("additional_special_tokens") or []]:
        if content and content not in found:
            found[content] = (None, AddedToken(content, special=True, normalized=False))
    return sorted(found.values(), key=lambda item: (item[0] is None, item[0] or 0))


def backend_from_sentencepiece(folder: str | Path, config: dict | None = None) -> Tokenizer:
    """The folder's ``tokenizer.model`` with its added tokens and BOS/EOS rule (see the module docstring).

    Args:
        folder: a model folder holding ``tokenizer.model``.
        config: its ``tokenizer_config.json`` (read from the folder when None).

    Raises:
        ModelLoadError: unreadable model, an unsupported SentencePiece setting, or an added token whose id
            does not fit the vocabulary.
    """
    folder = Path(folder)
    if config is None:
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
    tok = tokenizer_from_proto(read_model_proto(folder / "tokenizer.model"))
    if config.get("legacy") is False:
        log.warning("%s: tokenizer_config.json asks for legacy=false SentencePiece encoding; puyu encodes legacy-style "
                    "(text right after a special token gets SentencePiece's dummy-prefix space)", folder)
    for want, token in _added_tokens(folder, config):
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        got = tok.token_to_id(token.content)
        if want is not None and got != want:
            raise ModelLoadError(f"{folder}: added token {token.content!r} is id {want} in tokenizer_config.json / added_tokens.json "
                                 f"but falls at {got} after the {tok.get_vocab_size(with_added_tokens=False)}-piece tokenizer.model; "
                                 "the files come from different tokenizers")
    _add_bos_eos(tok, _content(config.get("bos_token")), _content(config.get("eos_token")), bool(config.get("add_bos_token", True)),
                 bool(config.get("add_eos_token", False)))
    return tok
