"""Cited answers: citation checking on scripted model replies, refusals, streaming, prompt trimming, the built-in model."""

from __future__ import annotations

import re

import pytest

from puyu.client import LocalClient
from puyu.errors import ConfigError, ContextLengthError
from puyu.generation import SamplingParams
from puyu.rag.answer import NOTHING_RELEVANT, answer_stream, check_citations
from puyu.rag.retrieval import Hit


class ScriptedGenerator:
    """Replies with fixed pieces and records the conversations it was given."""

    def __init__(self, *pieces: str):
        self.pieces, self.calls = pieces, []

    def stream_chat(self, messages, params):
        self.calls.append((messages, params))
        yield from self.pieces


def hits(n, similarity=0.8):
    return [Hit(f"Fact number {i}.", f"/docs/f{i}.md", ["Guide"], i, i + 1, id=f"id{i}", similarity=similarity) for i in range(1, n + 1)]


def test_valid_citations_map_to_their_sources():
    text, citations, invalid = check_citations("Paris [2]. Lyon [1, 2] and [2][3].", hits(3))
    assert text == "Paris [2]. Lyon [1][2] and [2][3]." and invalid == []
    assert [(c.number, c.hit.id) for c in citations] == [(2, "id2"), (1, "id1"), (3, "id3")]


def test_out_of_range_citations_are_flagged_or_dropped():
    flagged, citations, invalid = check_citations("A [1]. B [4]. C [0, 2].", hits(2))
    assert flagged == "A [1]. B [4?]. C [0?][2]." and invalid == [4, 0] and [c.number for c in citations] == [1, 2]
    dropped, _, invalid = check_citations("A [1]. B [4]. C [0, 2].", hits(2), policy="drop")
    assert dropped == "A [1]. B. C [2]." and invalid == [4, 0]
    with pytest.raises(ConfigError, match="policy"):
        check_citations("x", hits(1), policy="ignore")


def test_answer_streams_pieces_then_checks_them():
    generator = ScriptedGenerator("The answer ", "is 42 [1]", " and [9].")
    stream = answer_stream("What is it?", hits(2), generator, SamplingParams(max_new_tokens=20))
    assert list(stream) == ["The answer ", "is 42 [1]", " and [9]."]
    answer = stream.answer
    assert answer.text == "The answer is 42 [1] and [9?]." and answer.invalid == [9] and not answer.uncited
    assert answer.references() == "[1] /docs/f1.md § Guide, lines 1-2"
    messages, params = generator.calls[0]
    assert params == SamplingParams(max_new_tokens=20, loop_guard=8) and messages[-1]["role"] == "user"
    assert "[1] (f1.md § Guide)\nFact number 1." in messages[-1]["content"]
    assert "[2] (f2.md § Guide)" in messages[-1]["content"] and messages[-1]["content"].endswith("Question: What is it?")


def test_missing_citations_mark_the_answer_uncited():
    answer = answer_stream("Q?", hits(2), ScriptedGenerator("No citation here.")).result()
    assert answer.uncited and answer.citations == [] and answer.invalid == []


def test_nothing_relevant_is_said_without_generating():
    generator = ScriptedGenerator("invented [1]")
    answer = answer_stream("Q?", hits(3, similarity=0.1), generator, min_similarity=0.25).result()
    assert answer.refused and answer.text == NOTHING_RELEVANT and generator.calls == [] and not answer.uncited
    kept = answer_stream("Q?", hits(1, 0.9) + hits(1, 0.1), ScriptedGenerator("ok [1]"), min_similarity=0.25)
    assert len(kept.sources) == 1


def test_sources_are_trimmed_to_fit_the_context_window(tiny_llm):
    long_hits = [Hit("fox " * 12, f"/d{i}.md", id=f"id{i}", similarity=0.9) for i in range(6)]
    client = LocalClient(tiny_llm)
    stream = answer_stream("Q?", long_hits, client, SamplingParams(max_new_tokens=8, temperature=0))
    assert 1 <= len(stream.sources) < 6
    assert len(stream.result().text) > 0  # the trimmed prompt fits: generation ran
    with pytest.raises(ContextLengthError, match="smaller chunks"):
        answer_stream("Q?", [Hit("fox " * 200, "/big.md", id="big", similarity=0.9)], client, SamplingParams(max_new_tokens=8))


def test_template_needs_both_fields():
    with pytest.raises(ConfigError, match="template"):
        answer_stream("Q?", hits(1), ScriptedGenerator("x"), template="no fields")


def test_kb_ask_retrieves_then_answers(make_kb, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "port.md").write_text("# Serving\n\nThe API server listens on port 23333 by default.\n")
    kb = make_kb()
    kb.build([tmp_path / "d"])
    generator = ScriptedGenerator("It listens on port 23333 [1].")
    answer = kb.ask("Which port does the API server listen on?", generator, k=3)
    assert [c.hit.text for c in answer.citations] == ["The API server listens on port 23333 by default."]
    assert answer.citations[0].hit.headings == ["Serving"] and answer.citations[0].hit.line_start == 3
    refused = kb.ask("Who painted the Sistine Chapel ceiling?", ScriptedGenerator("x"), min_similarity=0.5)
    assert refused.refused


@pytest.mark.builtin
def test_builtin_model_answers_from_the_knowledge_base(make_kb, builtin_llm, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "capital.md").write_text("# Geography\n\nThe capital of France is Paris.\n")
    kb = make_kb()
    kb.build([tmp_path / "d"])
    params = SamplingParams(temperature=0, max_new_tokens=40)
    stream = kb.ask_stream("What is the capital of France?", LocalClient(builtin_llm), params=params, answer="generative")
    pieces = list(stream)
    answer = stream.answer
    assert len(pieces) > 1 and "Paris" in answer.text
    assert all(1 <= c.number <= len(answer.sources) for c in answer.citations)


@pytest.mark.builtin
def test_builtin_model_auto_answers_hold_up(make_kb, builtin_llm, tmp_path):
    """The report that started the loop guard: "The server is [5]. The server is [6]. ..." must not come back."""
    (tmp_path / "d").mkdir()
    for i, topic in enumerate(["server", "client", "cache", "quantization", "vision", "benchmark"]):
        (tmp_path / "d" / f"{topic}.md").write_text(f"# {topic.title()}\n\nThe {topic} guide. Start the {topic} with "
                                                    f"`lmdeploy {topic} start --port 2333{i}`. The {topic} has options.\n")
    kb = make_kb()
    kb.build([tmp_path / "d"])
    answer = kb.ask("How do I start the server?", LocalClient(builtin_llm), answer="auto")
    assert answer.invalid == [] and answer.citations and not (answer.looped and answer.mode == "generative")
    assert "`lmdeploy server start --port 23330`" in answer.text or answer.mode == "generative"


def passages():
    return [Hit("LMDeploy is a toolkit for compressing and serving LLMs. Start the server with lmdeploy serve api_server. "
                "It listens on port 23333 by default.", "/docs/serve.md", ["Serving"], 1, 3, id="a", similarity=0.8),
            Hit("Quantization shrinks weights to 4 bits. Use lmdeploy lite auto_awq for AWQ.", "/docs/quant.md", id="b", similarity=0.6)]


def test_extractive_answers_quote_cited_sentences_verbatim(embedder):
    answer = answer_stream("Which port does the server listen on?", passages(), None, mode="extractive", embedder=embedder).result()
    assert answer.mode == "extractive" and answer.citations and answer.invalid == []
    quoted = re.findall(r"\s*(.+?) \[(\d+)\]", answer.text)
    assert quoted and any("23333" in sentence for sentence, _ in quoted)
    for sentence, number in quoted:  # every sentence exists verbatim in the chunk it cites
        assert sentence in answer.sources[int(number) - 1].text


def test_looping_reply_is_trimmed_and_flagged():
    generator = ScriptedGenerator("The server is [1]. The server is [2]. The server is [3]. The server is [4].")
    answer = answer_stream("Q?", passages(), generator).result()
    assert answer.looped and answer.mode == "generative" and answer.text == "The server is [1]."
    assert generator.calls[0][1].loop_guard == 8  # answers always run with the loop guard


@pytest.mark.parametrize("reply, reason", [
    ("The server is [1]. The server is [2]. The server is [3]. The server is [4].", "repeated itself"),
    ("It listens on port 23333.", "cited no source"),
    ("It listens on port 23333 [7].", "[7]"),
])
def test_auto_falls_back_to_quoting_when_the_reply_is_degenerate(embedder, reply, reason):
    stream = answer_stream("Which port does the server listen on?", passages(), ScriptedGenerator(*reply.split(" ")), mode="auto",
                           embedder=embedder)
    pieces = list(stream)
    answer = stream.answer
    assert answer.mode == "extractive" and reason in answer.fallback and pieces == [answer.text]
    assert "23333" in answer.text and answer.invalid == [] and answer.citations


def test_auto_keeps_a_sound_generated_answer(embedder):
    answer = answer_stream("Which port?", passages(), ScriptedGenerator("Port 23333 [1]."), mode="auto", embedder=embedder).result()
    assert answer.mode == "generative" and answer.fallback is None and answer.text == "Port 23333 [1]."


def test_answer_modes_are_checked(embedder):
    with pytest.raises(ConfigError, match="answer mode"):
        answer_stream("Q?", passages(), ScriptedGenerator("x"), mode="creative")
    with pytest.raises(ConfigError, match="embedder"):
        answer_stream("Q?", passages(), ScriptedGenerator("x"), mode="auto")
    with pytest.raises(ConfigError, match="chat model"):
        answer_stream("Q?", passages(), None, mode="generative")
