"""Calibration data for quantization: text → token batches, and a walk over the decoder layers.

Contract::

    tokens = calibration_batches(tokenizer, source=None, samples=128, seqlen=512)  # LongTensor [samples, seqlen]
    walk = DecoderWalk(model, tokens)            # walk.hidden: the inputs of layer 0, [samples, seqlen, hidden]
    for i, layer in enumerate(model.model.layers):
        with record_inputs({"down": layer.mlp.down_proj}, lambda name, x: ...):  # x: [rows, in_features]
            out = walk.run(layer, i)             # the layer's outputs on walk.hidden
        walk.feed(layer, i, {"q": layer.self_attn.q_proj}, callback)  # or: inputs only, stopping there
        walk.hidden = out                        # (or the quantized layer's outputs, as GPTQ does)

The split, in this one place: calibration reads the *head* of the pre-training samples under
``$PUYU_DATA_DIR/pretrain`` (:data:`CALIBRATION_SPLIT`), and quality is measured on their *tail*
(:data:`HELD_OUT_SPLIT`, what ``bench/quant.py`` scores for perplexity), so no held-out document is ever seen
by a calibration.  Evaluation benchmarks (``eval/``) are never calibration data.

Documents are joined with the tokenizer's EOS token into one stream and cut into ``seqlen`` windows; ``samples``
of them are drawn with a fixed seed (as AutoAWQ and GPTQ draw blocks of C4).  Too little text for
``samples × seqlen`` tokens is a :class:`~puyu.errors.ConfigError`, never silent repetition.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from puyu.errors import ConfigError, DatasetError
from puyu.home import data_dir

# (file under the data dir, first document, end document): documents are JSONL rows or non-empty text lines.
CALIBRATION_SPLIT = (("pretrain/llamafactory_text/c4_demo.jsonl", 0, 250), ("pretrain/llamafactory_text/wiki_demo.txt", 0, 26))
HELD_OUT_SPLIT = (("pretrain/llamafactory_text/c4_demo.jsonl", 270, 300), ("pretrain/llamafactory_text/wiki_demo.txt", 27, 28))
# The linears of a decoder layer that calibrated methods quantize (the LM head stays in float, as AutoAWQ and GPTQ keep it).
LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                 "mlp.down_proj")


def read_documents(path: str | Path) -> list[str]:
    """The documents of a ``.jsonl`` file (each row's ``text``) or a text file (each non-empty line).

    Raises:
        ConfigError: the file is missing.  DatasetError: a JSONL row is not an object with a string ``text``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration file {path} does not exist; give a .jsonl file with a 'text' field per row or a .txt file")
    if path.suffix.lower() != ".jsonl":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DatasetError(f"{path}:{number}: each row needs a string field 'text'")
        docs.append(row["text"])
    return docs


def split_documents(split, root: str | Path | None = None) -> dict[str, list[str]]:
    """The documents of a split such as :data:`CALIBRATION_SPLIT`, by file name (the data dir: ``root`` or $PUYU_DATA_DIR)."""
    base = data_dir(root, "--data-dir DIR (the folder holding pretrain/)")
    return {Path(file).stem: read_documents(base / file)[start:end] for file, start, end in split}


def calibration_texts(source: str | Path | None = None, root: str | Path | None = None) -> list[str]:
    """Documents of ``source`` (a .jsonl/.txt file), or of :data:`CALIBRATION_SPLIT` when None."""
    if source is not None:
        return read_documents(source)
    return [doc for docs in split_documents(CALIBRATION_SPLIT, root).values() for doc in docs]


def held_out_texts(root: str | Path | None = None) -> dict[str, list[str]]:
    """The held-out documents (:data:`HELD_OUT_SPLIT`) by file name: what quantization quality is measured on."""
    return split_documents(HELD_OUT_SPLIT, root)


def calibration_batches(tokenizer, source: str | Path | None = None, samples: int = 128, seqlen: int = 512, seed: int = 0,
                        root: str | Path | None = None) -> torch.Tensor:
    """Token windows for calibration: ``[samples, seqlen]`` int64 (see the module docstring).

    Args:
        tokenizer: a :class:`~puyu.tokenizer.Tokenizer` (``encode``, ``eos_id``).
        source: a .jsonl (``text`` per row) or .txt file; None reads :data:`CALIBRATION_SPLIT` from the data dir.
        samples: windows to draw; seqlen: tokens per window.
        seed: which windows (a fixed seed gives the same batches every run).
        root: the data dir for the default source (default: $PUYU_DATA_DIR).

    Raises:
        ConfigError: ``samples``/``seqlen`` not positive, or the text holds fewer than ``samples × seqlen`` tokens.
    """
    if samples < 1 or seqlen < 2:
        raise ConfigError(f"calibration needs at least 1 sample of 2 tokens, got --calib-samples {samples} --calib-seqlen {seqlen}")
    separator = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    stream: list[int] = []
    for doc in calibration_texts(source, root):
        stream += tokenizer.encode(doc, add_special_tokens=False) + separator
    windows = len(stream) // seqlen
    if windows < samples:
        where = source or "the default calibration split of $PUYU_DATA_DIR/pretrain"
        raise ConfigError(f"calibration text {where} has {len(stream)} tokens, fewer than --calib-samples {samples} × "
                          f"--calib-seqlen {seqlen} = {samples * seqlen}; give more text or lower --calib-samples/--calib-seqlen")
    chosen = torch.randperm(windows, generator=torch.Generator().manual_seed(seed))[:samples].sort().values
    return torch.tensor(stream[: windows * seqlen], dtype=torch.long).view(windows, seqlen)[chosen]


@contextlib.contextmanager
def record_inputs(modules: dict[str, nn.Module], callback: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """While active, every call of ``modules[name]`` first calls ``callback(name, x)`` with its input ``[rows, in_features]``."""
    handles = [module.register_forward_pre_hook(lambda _m, args, name=name: callback(name, args[0].reshape(-1, args[0].shape[-1])))
               for name, module in modules.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Enough(Exception):
    """Raised inside a layer once :meth:`DecoderWalk.feed` has seen the inputs it needs."""


class DecoderWalk:
    """The calibration activations of a Llama-family model, walked one decoder layer at a time.

    Args:
        model: a :class:`~puyu.model.Transformer` (``model.model.embed_tokens``/``layers``, ``model.rope``).
        tokens: ``[samples, seqlen]`` from :func:`calibration_batches`.
        batch_size: rows per forward call (memory: ``batch_size × seqlen × intermediate_size`` floats per call).

    ``hidden`` ``[samples, seqlen, hidden]`` holds the current layer's inputs (the embeddings at first), on the
    model's device in its dtype.
    """

    def __init__(self, model: nn.Module, tokens: torch.Tensor, batch_size: int = 8):
        self.batch_size = batch_size
        device, dtype = model.model.embed_tokens.weight.device, model.model.embed_tokens.weight.dtype
        with torch.no_grad():
            self.hidden = model.model.embed_tokens(tokens.to(device))
            positions = torch.arange(tokens.shape[1], device=device)[None]
            self.cos, self.sin = model.rope(positions, dtype)

    @property
    def tokens(self) -> int:
        return self.hidden.shape[0] * self.hidden.shape[1]

    @torch.no_grad()
    def map(self, fn: Callable[..., torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        """``fn(rows, cos, sin)`` over ``x`` (default: :attr:`hidden`) in batches of rows, concatenated."""
        x = self.hidden if x is None else x
        return torch.cat([fn(rows, self.cos, self.sin) for rows in x.split(self.batch_size)])

    @staticmethod
    def linears(layer: nn.Module, names: tuple[str, ...] = LAYER_LINEARS) -> dict[str, nn.Module]:
        """The named linears of a decoder layer (:data:`LAYER_LINEARS` by default)."""
        return {name: layer.get_submodule(name) for name in names}

    def feed(self, layer: nn.Module, index: int, modules: dict[str, nn.Module], callback: Callable[[str, torch.Tensor], None]) -> None:
        """Run decoder layer ``index`` on :attr:`hidden` only as far as needed: ``callback(name, x)`` gets the input of each
        of ``modules`` (listed in call order), and each batch stops once the last of them has been called."""
        last = list(modules)[-1]

        def on_input(name: str, x: torch.Tensor) -> None:
            callback(name, x)
            if name == last:
                raise _Enough

        with torch.no_grad(), record_inputs(modules, on_input):
            for rows in self.hidden.split(self.batch_size):
                try:
                    layer(rows, self.cos, self.sin, None, index, None)
                except _Enough:
                    pass

    def run(self, layer: nn.Module, index: int, x: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder layer ``index``'s outputs on ``x`` (default: :attr:`hidden`), causal attention, no cache."""
        return self.map(lambda rows, cos, sin: layer(rows, cos, sin, None, index, None), x)
