"""MT-Bench judging pieces: rating extraction, golden judge prompts from the real data, judge metrics and the judge client's errors."""

from __future__ import annotations

import json
import math

import httpx2
import pytest

from puyu.errors import ConfigError
from puyu.eval.judge import UNRATED, JudgeClient, JudgeConfig, JudgeTemplates, extract_rating, judge_metric
from puyu.eval.metrics import aggregate, is_percentage
from puyu.eval.tasks import load_examples, load_task
from tests.conftest import DATASETS


@pytest.mark.parametrize("judgment, rating", [
    ("The answer is helpful and accurate.\n\nRating: [[8]]", 8.0),
    ("Decent but shallow. Rating: [[6.5]]", 6.5),
    ("I would give it [7] out of 10.", 7.0),                      # FastChat's fallback pattern
    ("First [[3]], on reflection [[9]]", 3.0),                    # the first match counts
    ("See point [2]. Final verdict: Rating: [[4]]", 4.0),         # [[N]] wins over an earlier [N]
    ("Rating: 10/10, excellent.", UNRATED),
    ("Rating: [[ten]]", UNRATED),
    ("", UNRATED),
])
def test_rating_extraction(judgment, rating):
    assert extract_rating(judgment) == rating


RATE = ('After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: '
        '"[[rating]]", for example: "Rating: [[5]]".\n\n')
Q81 = ("Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions.",
       "Rewrite your previous response. Start every sentence with the letter A.")
ANSWERS = ["Aloha {island} trip!", "A lovely {island} trip."]  # braces must survive the str.format templates

GENERAL_TURN1 = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user "
    "question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
    "and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. " + RATE +
    f"[Question]\n{Q81[0]}\n\n[The Start of Assistant's Answer]\nAloha {{island}} trip!\n[The End of Assistant's Answer]")

GENERAL_TURN2_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question "
    "displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level "
    "of detail of the response. You evaluation should focus on the assistant's answer to the second user question. Begin your evaluation "
    "by providing a short explanation. Be as objective as possible. " + RATE)
GENERAL_TURN2 = (
    f"<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{Q81[0]}\n\n### Assistant A:\nAloha {{island}} trip!\n\n"
    f"### User:\n{Q81[1]}\n\n### Assistant A:\nA lovely {{island}} trip.\n\n<|The End of Assistant A's Conversation with User|>")

MATH_REFERENCE = (
    "To find the area of the triangle, we can use the formula for the area of a triangle with coordinates A(x1, y1), B(x2, y2), and "
    "C(x3, y3):\n\nArea = (1/2) * |(x1(y2 - y3) + x2(y3 - y1) + x3(y1 - y2))|\n\nIn this case, the coordinates are A(0, 0), B(-1, 1), "
    "and C(3, 3). Plugging these values into the formula, we get:\n\nArea = (1/2) * |(0(1 - 3) + (-1)(3 - 0) + 3(0 - 1))|\n\n"
    "Area = (1/2) * |(-0 + 3 - 3)|\n\nArea = (1/2) * |0|\n\nArea = 0\n\nThe area of the triangle is 0. This means that the three points "
    "are collinear, and there is no triangle formed by these points.")
MATH_TURN1 = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user "
    "question displayed below. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the "
    "assistant's answer. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any "
    "mistakes. Be as objective as possible. " + RATE +
    "[Question]\nThe vertices of a triangle are at points (0, 0), (-1, 1), and (3, 3). What is the area of the triangle?\n\n"
    f"[The Start of Reference Answer]\n{MATH_REFERENCE}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant's Answer]\nAloha {island} trip!\n[The End of Assistant's Answer]")


@pytest.fixture(scope="module")
def mt_bench():
    spec = load_task("mt_bench")
    records = {e.doc["question_id"]: dict(e.doc, answers=ANSWERS) for e in load_examples(spec, DATASETS)}
    return JudgeTemplates(spec.judge, DATASETS, "mt_bench"), records


def test_judge_prompts_match_fastchat(mt_bench):
    templates, records = mt_bench
    assert len(records) == 80
    name, messages = templates.messages(records[81], 0)
    assert name == "single-v1"
    assert messages == [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": GENERAL_TURN1}]
    name, messages = templates.messages(records[81], 1)
    assert name == "single-v1-multi-turn"
    assert messages == [{"role": "system", "content": GENERAL_TURN2_SYSTEM}, {"role": "user", "content": GENERAL_TURN2}]
    name, messages = templates.messages(records[111], 0)
    assert name == "single-math-v1" and records[111]["category"] == "math"
    assert messages[1]["content"] == MATH_TURN1


def test_reference_templates_for_math_reasoning_and_coding_only(mt_bench):
    templates, records = mt_bench
    chosen = {(r["category"], templates.messages(r, 1)[0]) for r in records.values()}
    reference = {c for c, name in chosen if name == "single-math-v1-multi-turn"}
    assert reference == {"math", "reasoning", "coding"}
    assert {c for c, name in chosen if name == "single-v1-multi-turn"} == {"writing", "roleplay", "extraction", "stem", "humanities"}
    assert "### Reference answer:\n" in templates.messages(records[121], 1)[1][1]["content"]  # a coding question's second turn


def _judged(*ratings_per_record):
    return [{"judgments": [{"rating": r} for r in ratings]} for ratings in ratings_per_record]


def test_unrated_turns_are_counted_and_left_out_of_the_averages():
    records = _judged([8.0, UNRATED], [6.0, 4.0], [UNRATED, UNRATED])
    assert aggregate(records, "judge_score") == pytest.approx(6.0)       # (8 + 6 + 4) / 3: per judgment, as FastChat
    assert aggregate(records, "judge_score_turn1") == pytest.approx(7.0)
    assert aggregate(records, "judge_score_turn2") == pytest.approx(4.0)
    assert (aggregate(records, "judged"), aggregate(records, "judge_failed")) == (3, 3)
    assert math.isnan(judge_metric(_judged([UNRATED, UNRATED]), "judge_score"))
    assert not is_percentage("judge_score") and not is_percentage("judge_failed") and is_percentage("acc")


def _client(responses: list[httpx2.Response], seen: list[dict], max_retries: int = 1) -> JudgeClient:
    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return responses.pop(0)

    return JudgeClient(JudgeConfig(model="judge", api_base="http://judge.test/v1", api_key="k", max_retries=max_retries),
                       http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))


def _reply(text: str) -> httpx2.Response:
    return httpx2.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "judge", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})


def _error(status: int, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"message": message, "type": "error", "param": None, "code": None}},
                           headers={"retry-after-ms": "1"})


def test_judge_client_retries_transient_errors_and_records_invalid_requests():
    seen: list[dict] = []
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    client = _client([_error(503, "busy"), _reply("Good. Rating: [[9]]")], seen)
    assert client.judge(messages) == "Good. Rating: [[9]]"
    assert len(seen) == 2 and seen[0]["temperature"] == 0 and seen[0]["messages"] == messages and seen[0]["max_tokens"] == 2048
    too_long = _client([_error(400, "the prompt has 9000 tokens but the context window is 8192")], [])
    assert too_long.judge(messages) == "$ERROR$: Error code: 400 - the prompt has 9000 tokens but the context window is 8192"
    with pytest.raises(ConfigError, match="judge judge at http://judge.test/v1 failed.*--judge-api-key.*--reuse"):
        _client([_error(401, "bad key")], []).judge(messages)
    with pytest.raises(ConfigError, match="failed"):
        _client([_error(500, "down"), _error(500, "down")], []).judge(messages)


def test_missing_judge_is_a_clear_error(capsys):
    from puyu.cli import main

    assert main(["eval", "--tasks", "mt_bench", "--data-dir", str(DATASETS)]) == 2
    err = capsys.readouterr().err
    assert "task mt_bench is rated by a judge model: pass --judge-model NAME --judge-api-base URL" in err
    assert main(["eval", "--tasks", "mt_bench", "--data-dir", str(DATASETS), "--judge-model", "gpt-4"]) == 2
    assert "the judge lacks --judge-api-base" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"judge: unknown keys \['temperature'\]"):
        JudgeConfig.from_dict({"model": "m", "api_base": "http://x/v1", "temperature": 0.7})
