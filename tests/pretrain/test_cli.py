"""The commands of the pre-training chain: puyu tokenizer train, puyu tokenizer shards, puyu pretrain (shipped recipe)."""

from __future__ import annotations

import json

from puyu.cli import main
from puyu.data.shards import SourceShards, read_meta
from puyu.tokenizer import Tokenizer
from puyu.train.config import load_recipe
from puyu.train.trainer import Trainer


def test_tokenizer_and_shards_commands(tmp_path, english_docs, chinese_docs, capsys):
    (tmp_path / "en.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in english_docs))
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "part-0.jsonl").write_text("".join(json.dumps({"content": d}, ensure_ascii=False) + "\n" for d in chinese_docs[:30]))
    (tmp_path / "zh" / "part-1.txt").write_text("\n".join(chinese_docs[30:]).replace("\n\n", "\n"))
    tok_dir, shards = tmp_path / "tok", tmp_path / "shards"
    assert main(["tokenizer", "train", str(tmp_path / "en.jsonl"), str(tmp_path / "zh"), "--vocab-size", "400", "--out", str(tok_dir)]) == 0
    assert "400 tokens" in capsys.readouterr().out
    assert main(["tokenizer", "shards", f"{tmp_path / 'en.jsonl'}", f"zh={tmp_path / 'zh'}", "--tokenizer", str(tok_dir),
                 "--out", str(shards), "--val-fraction", "0.1"]) == 0
    meta = read_meta(shards)
    assert set(meta["sources"]) == {"en", "zh"} and meta["vocab_size"] == 400
    tok = Tokenizer.from_folder(shards / "tokenizer")
    first = SourceShards.open(shards, "zh").tokens(0).tolist()
    assert tok.decode(first) in chinese_docs[:30]  # documents in file order, EOS dropped by decode
    assert main(["tokenizer", "shards", f"x={tmp_path / 'missing.jsonl'}", "--tokenizer", str(tok_dir), "--out", str(shards)]) == 2
    assert "no such corpus file" in capsys.readouterr().err


def test_shipped_recipe_trains_a_step_with_its_own_settings(shard_root, tmp_path):
    """nano size, 256-token rows, batch 8 x 2, samples and validation: all as shipped; only the shard folder differs."""
    recipe = load_recipe("pretrain_tiny", [f"pretrain.shards={shard_root}", "train.max_steps=1", f"output_dir={tmp_path / 'run'}",
                                           "monitor.sample_max_new_tokens=4", "pretrain.val_rows=2"])
    assert recipe.train.precision == "auto" and recipe.pretrain.size == "nano"
    result = Trainer(recipe).fit()
    assert (result.output / "config.json").exists() and result.val_loss is not None
    assert len((result.run_dir / "samples.jsonl").read_text().splitlines()) == 2
