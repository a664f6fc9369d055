"""Chinese: BM25 by jieba words, sentence splitting on Chinese punctuation, retrieval with the English-only built-in embedder."""

from __future__ import annotations

from puyu.rag.splitter import sentence_spans
from puyu.rag.store import keyword_tokens

DOCS = {
    "serve.md": "# 部署服务\n\n使用 lmdeploy serve api_server 命令启动推理服务器。服务器默认监听 23333 端口。\n",
    "quant.md": "# 模型量化\n\n量化可以把模型权重压缩为四比特整数，显著降低显存占用。\n",
    "install.md": "# 安装\n\n推荐使用 pip 安装，需要先准备好 Python 环境和显卡驱动。\n",
    "faq.md": "# 常见问题\n\n如果出现内存不足的错误，请减小批处理大小或者缩短上下文长度。\n",
}


def test_chinese_is_indexed_by_words_not_characters_or_lines():
    tokens = keyword_tokens("我们一起去公园散步，服务器默认监听端口。")
    assert {"我们", "一起", "公园", "散步", "服务器", "默认", "监听", "端口"} <= set(tokens)
    assert "公" not in tokens and "园" not in tokens  # not characters
    assert all(len(t) <= 4 for t in tokens)  # not whole runs of text
    mixed = keyword_tokens("Start the api_server 服务器")
    assert mixed[:2] == ["start", "api_server"] and "服务器" in mixed  # English words as before (stop words dropped)


def test_sentences_split_at_chinese_punctuation_and_keep_closing_quotes():
    text = "他说：“今天很好。”然后走了！真的吗？是的；Fine. Next one."
    assert [text[a:b] for a, b in sentence_spans(text)] == ["他说：“今天很好。”", "然后走了！", "真的吗？", "是的；", "Fine.", "Next one."]


def test_a_chinese_query_finds_its_passage_with_the_english_embedder(make_kb, tmp_path):
    """all-MiniLM-L6-v2 maps Chinese to [UNK]: the build says so, and hybrid search leans on BM25, which finds the passage."""
    (tmp_path / "zh").mkdir()
    for name, text in DOCS.items():
        (tmp_path / "zh" / name).write_text(text)
    kb = make_kb("zh")
    report = kb.build([tmp_path / "zh"])
    assert report.coverage < 0.5  # the language mismatch the CLI warns about
    assert kb.retriever.dense_weight("如何启动推理服务器？") == 0.0 and kb.retriever.dense_weight("How do I start it?") == 1.0
    for query, expected in (("如何启动推理服务器？", "serve.md"), ("怎样降低显存占用", "quant.md"), ("内存不足怎么办", "faq.md")):
        for mode in ("hybrid", "bm25"):
            assert kb.search(query, k=1, mode=mode)[0].source.endswith(expected), (query, mode)

    answer = kb.ask("如何启动推理服务器？", None, answer="extractive")  # not refused for a low cosine the embedder cannot judge
    assert not answer.refused and answer.citations[0].hit.source.endswith("serve.md") and "启动推理服务器" in answer.text
