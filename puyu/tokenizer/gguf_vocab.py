"""Build a ``tokenizers`` tokenizer from the vocabulary stored in a GGUF file.

Supports byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``), the
kind SmolLM2, Llama 3 and Qwen2 GGUFs carry, and SentencePiece ones (``"llama"``:
InternLM2/2.5, Llama 2, Mistral v0.1) through :mod:`puyu.tokenizer.sentencepiece`.  The text is split
the way llama.cpp splits it for the file's ``tokenizer.ggml.pre`` type (for
``smollm`` that means single digits, as in SmolLM2's own tokenizer.json; note
that ``transformers``' GGUF loader ignores this and splits numbers differently).
Tokens typed CONTROL become special tokens, USER_DEFINED ones added tokens.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from puyu.errors import ModelLoadError

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bytes_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in (None, "default", "gpt2", "gpt-2"):
        return byte_level
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), bytes_only])
    if pre in ("qwen2", "deepseek-r1-qwen", "internlm2"):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), bytes_only])
    raise ModelLoadError(
        f"the GGUF's tokenizer pre-split type {pre!r} is not supported; load the model's Hugging Face folder instead"
    )


def tokenizer_from_gguf(meta: dict) -> Tokenizer:
    """A tokenizer from GGUF metadata (``tokenizer.ggml.*`` keys, values already decoded)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind == "llama":  # a SentencePiece vocabulary (InternLM2/2.5, Llama 2, Mistral v0.1)
        from puyu.tokenizer.sentencepiece import tokenizer_from_gguf_metadata

        return tokenizer_from_gguf_metadata(meta)
    if kind != "gpt2":
        raise ModelLoadError(
            f"GGUF tokenizer type {kind!r} is not supported (puyu reads byte-level BPE, 'gpt2', and SentencePiece, 'llama'); "
            "load the model's Hugging Face folder instead"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    pre = meta.get("tokenizer.ggml.pre")
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=merges,
        fuse_unk=False,
        ignore_merges=pre in ("llama3", "llama-v3", "llama-bpe"),
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED])
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos_id is not None:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1",
                                                           special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok
