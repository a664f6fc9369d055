"""Fixtures for pre-training tests: a BPE trained on real English and Chinese text, its token shards, a recipe."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from puyu.data.documents import iter_documents
from puyu.tokenizer.training import train_tokenizer
from tests.conftest import DATASETS

C4 = DATASETS / "pretrain" / "llamafactory_text" / "c4_demo.jsonl"
ZH = DATASETS / "pretrain" / "chinese_classics" / "chinese_classics.jsonl"


def corpus(path: Path, count: int) -> list[str]:
    return list(itertools.islice(iter_documents(path), count))


@pytest.fixture(scope="session")
def english_docs() -> list[str]:
    return corpus(C4, 40)


@pytest.fixture(scope="session")
def chinese_docs() -> list[str]:
    return corpus(ZH, 60)


@pytest.fixture(scope="session")
def bpe(english_docs, chinese_docs):
    """A 512-token byte-level BPE (ChatML) trained on the two corpora."""
    return train_tokenizer(english_docs + chinese_docs, 512, show_progress=False)


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory, bpe, english_docs, chinese_docs) -> Path:
    """Shards of three sources, ``en``, ``zh`` and ``lines`` (short documents: the lines of the Chinese texts),
    with about 10% of the documents held out."""
    from puyu.data.shards import write_source

    root = tmp_path_factory.mktemp("shards")
    write_source(english_docs, bpe, root, "en", val_fraction=0.1)
    write_source(chinese_docs, bpe, root, "zh", val_fraction=0.1)
    write_source([line for d in chinese_docs for line in d.splitlines()], bpe, root, "lines", val_fraction=0.1)
    return root


@pytest.fixture
def pretrain_recipe(tmp_path, shard_root):
    """``pretrain_recipe("train.max_steps=4", ..., run="name")``: the shipped pretrain_tiny recipe on a pico model, fast."""
    from puyu.train.config import load_recipe

    def make(*overrides: str, run: str = "run"):
        base = [f"pretrain.shards={shard_root}", "pretrain.size=pico", "pretrain.seq_len=64", "pretrain.val_rows=4",
                "train.batch_size=2", "train.grad_accum=2", "train.max_steps=6", "train.save_every=0", "train.precision=fp32",
                "optim.warmup_steps=2", "monitor.log_every=1", "monitor.eval_every=0", "monitor.sample_prompts=[]",
                "monitor.tensorboard=false", f"output_dir={tmp_path / run}"]
        return load_recipe("pretrain_tiny", base + list(overrides))

    return make
