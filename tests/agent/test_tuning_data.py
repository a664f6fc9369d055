"""Agent-tuning data: GSM8K programs that reproduce the gold answer (or are dropped and counted), the seeded
bilingual task generator, trajectories equal to what the agent produces, and the loss on assistant turns only."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from puyu.agent import Agent, builtin_tools
from puyu.agent.models import Reply
from puyu.agent.tuning import HELD_OUT_PROMPTS, Mix, build, build_agent_data, build_rows, generate_tasks, gsm8k_program
from puyu.agent.tuning.build import GLAIVE, GSM8K_TRAIN, Recorder, gsm8k_trajectory, output_values, shown_values, task_trajectory
from puyu.agent.tuning.gsm8k import NotAProgram, gold_answer
from puyu.agent.tuning.tasks import TEMPLATES, task_key
from puyu.data.dataset import DataConfig, TrainData
from puyu.errors import ConfigError
from puyu.sandbox import PythonSandbox
from puyu.tokenizer.tool_formats import ToolCall
from tests.agent.fakes import ScriptedModel
from tests.conftest import DATASETS

REASONS = {"no_gold", "no_annotations", "not_arithmetic", "too_long", "malformed", "error", "wrong_answer"}


def _gsm8k_rows(n: int) -> list[dict]:
    with open(DATASETS / GSM8K_TRAIN, encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.fixture(scope="module")
def recorder():
    with PythonSandbox() as sandbox:
        yield Recorder(sandbox)


@pytest.fixture
def small_data_dir(tmp_path):
    """A datasets folder with only GSM8K *train* (first 40 rows) and the glaive chats: no test split to read."""
    for name, lines in [(GSM8K_TRAIN, 40), (GLAIVE, 300)]:
        target = tmp_path / "data" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(DATASETS / name, encoding="utf-8") as f:
            target.write_text("".join(next(f) for _ in range(lines)), encoding="utf-8")
    return tmp_path / "data"


def test_each_gsm8k_row_reproduces_its_gold_answer_when_run_or_is_dropped_with_a_reason(recorder):
    rows = _gsm8k_rows(60)
    kept = 0
    with PythonSandbox() as fresh:
        for row in rows:
            trajectory, reason = gsm8k_trajectory(recorder, row, ["python"])
            if trajectory is None:
                assert reason in REASONS
                continue
            kept += 1
            user, call, tool, answer = trajectory["messages"]
            code = json.loads(call["tool_calls"][0]["function"]["arguments"])["code"]
            gold = gold_answer(row["answer"])
            assert user == {"role": "user", "content": row["question"].strip()}
            assert tool["content"] == fresh.run(code).stdout.strip()  # the interpreter's real output, run again elsewhere
            assert abs(output_values(tool["content"])["value"] - gold) < 1e-6
            assert answer == {"role": "assistant", "content": f"The answer is {gold}."}
    assert kept >= 50  # most rows convert; the others were counted above


@pytest.mark.parametrize("row, reason", [
    ({"question": "q", "answer": "2*3 = <<2*3=6>>6\n#### 7"}, "wrong_answer"),  # the program prints 6, the gold says 7
    ({"question": "q", "answer": "It is six.\n#### 6"}, "no_annotations"),
    ({"question": "q", "answer": "<<import os=0>>\n#### 0"}, "not_arithmetic"),
    ({"question": "q", "answer": "<<2*3=6>>\n#### six"}, "no_gold"),
    ({"question": "q", "answer": " ".join(f"<<{i}*1000000=1>>" for i in range(20)) + "\n#### 1"}, "too_long"),
    ({"question": 3, "answer": "#### 1"}, "malformed"),
])
def test_a_row_that_cannot_give_the_gold_answer_is_dropped_with_its_reason(recorder, row, reason):
    assert gsm8k_trajectory(recorder, row, ["python"]) == (None, reason)


def test_programs_compute_from_earlier_steps():
    row = {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
           "answer": "48/2 = <<48/2=24>>24 in May.\n48+24 = <<48+24=72>>72 in all.\n#### 72"}
    assert gsm8k_program(row, 256).code == "a = 48 / 2\nb = 48 + a\nprint(b)"
    with pytest.raises(NotAProgram, match="cap of 10"):
        gsm8k_program(row, 10)


def test_the_generator_is_seeded_bilingual_and_never_asks_the_evaluation_prompts():
    tasks = generate_tasks(400, seed=3)
    assert [task_key(t) for t in tasks] == [task_key(t) for t in generate_tasks(400, seed=3)]
    assert [task_key(t) for t in tasks] != [task_key(t) for t in generate_tasks(400, seed=4)]
    assert {t.language for t in tasks} == {"en", "zh"} and {t.kind for t in tasks} == {"linear", "system", "percent", "convert"}
    assert {t.tool for t in tasks} == {"python", "solve", "calculator"}
    assert {t.kind for t in tasks if t.tool == "solve"} == {"linear", "system"}
    assert {t.kind for t in tasks if t.tool == "calculator"} == {"percent"}
    conversions = [t for t in tasks if t.kind == "convert"]  # through python's convert(), the units copied from the question
    assert {t.tool for t in conversions} == {"python"}
    assert all(re.search(r"convert\(([\d.]+), ", t.arguments["code"])[1] in t.question for t in conversions)
    assert all(re.search(r"convert\([\d.]+, '[\u4e00-\u9fff]+', '[\u4e00-\u9fff]+'\)", t.arguments["code"])
               for t in conversions if t.language == "zh")
    weighted = generate_tasks(60, seed=3, kinds=("linear", "convert", "convert"))
    assert [t.kind for t in weighted].count("convert") == 40
    def price_cuts(share: float) -> int:  # a price after a cut is computed as n * (100 - p) / 100
        tasks = generate_tasks(100, seed=3, kinds=("percent",), discount_share=share)
        return sum("(100 - " in json.dumps(t.arguments) for t in tasks)
    assert (price_cuts(0.0), price_cuts(1.0)) == (0, 100) and 35 <= price_cuts(0.5) <= 65
    assert all(re.search(r"[\u4e00-\u9fff]", t.question) for t in tasks if t.language == "zh")
    assert not any(re.search(r"[\u4e00-\u9fff]", t.question) for t in tasks if t.language == "en")
    assert all("Python" not in t.question or t.tool == "python" for t in tasks)
    questions = {re.sub(r"\s", "", t.question) for t in tasks}
    assert not questions & {re.sub(r"\s", "", p) for p in HELD_OUT_PROMPTS}
    assert not any(re.search(r"(?<![\d.])2x ?\+ ?3 ?= ?10(?!\d)", t.question) for t in tasks)


def test_held_out_phrasings_are_other_words():
    for kind, by_split in TEMPLATES.items():
        for language in ("en", "zh"):
            train, held_out = ({re.sub(r"\s", "", t) for t in by_split[split][language]} for split in ("train", "heldout"))
            assert not train & held_out, kind  # the grammars (tasks._wordings) leave the held-out wording out
    train = {t.question for t in generate_tasks(100, seed=0)}
    assert not train & {t.question for t in generate_tasks(100, seed=0, phrasings="heldout")}
    with pytest.raises(ConfigError, match="phrasings"):
        generate_tasks(1, phrasings="test")


def test_every_generated_task_is_solved_by_its_tool_for_real(recorder):
    for task in generate_tasks(48, seed=7):
        trajectory, reason = task_trajectory(recorder, task, ["python", "calculator", "solve"])
        assert reason is None, (task, reason)
        final = trajectory["messages"][-1]["content"]
        assert trajectory["messages"][2]["role"] == "tool" and "Error" not in trajectory["messages"][2]["content"]
        assert "{" not in final and re.search(r"\d", final)
        if task.kind in ("linear", "system"):  # the answer copies each value as the tool printed it
            shown = shown_values(trajectory["messages"][2]["content"])
            assert all(f"{name} = {shown[name]}" in final for name in task.expected), (final, shown)


def test_answers_copy_the_number_the_tool_printed():
    assert shown_values("x = 7/2 = 3.5") == {"x": "3.5"}
    assert shown_values("[{x: 35/4, y: -1}]") == {"x": "35/4", "y": "-1"}


def _without_ids(messages: list[dict]) -> list[dict]:
    """Messages with their random call ids blanked (the template never shows them)."""
    blank = [{k: v for k, v in m.items() if k != "tool_call_id"} for m in messages]
    return [m | {"tool_calls": [{**c, "id": ""} for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in blank]


def test_a_trajectory_is_exactly_what_the_agent_sends_its_model(recorder):
    """Replaying a trajectory's call through Agent gives the same messages and tools: train and inference match."""
    task = next(t for t in generate_tasks(8, seed=1) if t.tool == "solve")
    trajectory, _ = task_trajectory(recorder, task, ["python", "calculator", "solve"])
    call = trajectory["messages"][1]["tool_calls"][0]["function"]
    model = ScriptedModel([Reply("", [ToolCall(call["name"], call["arguments"])]), trajectory["messages"][-1]["content"]])
    with PythonSandbox() as sandbox:
        run = Agent(model, builtin_tools(["python", "calculator", "solve"], sandbox=sandbox), protocol="function").run(task.question)
    seen = model.requests[-1]
    assert _without_ids(seen["messages"]) == _without_ids(trajectory["messages"][:-1]) and seen["tools"] == trajectory["tools"]
    assert run.answer == trajectory["messages"][-1]["content"]


def test_the_build_counts_every_row_and_trains_assistant_turns_only(small_data_dir, tmp_path, tiny_tokenizer, monkeypatch):
    mix = Mix(gsm8k=30, tasks=12, glaive=6, seed=0)
    path, report = build_agent_data(mix, small_data_dir, tmp_path / "out", progress=False)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == sum(report.kept.values()) and report.kept["glaive"] == 6
    assert report.seen["gsm8k"] == report.kept["gsm8k"] + sum(report.dropped.get("gsm8k", {}).values()) <= 40
    assert all(row["tools"] for row in rows[:-6])
    again, _ = build_agent_data(mix, small_data_dir, tmp_path / "out", progress=False)  # cached: the same file, not rebuilt
    assert again == path and again.stat().st_mtime_ns == path.stat().st_mtime_ns
    with monkeypatch.context() as patch:  # a changed wording of the generator is a new set, not the cached one
        patch.setitem(TEMPLATES["linear"]["train"], "en", ["Tell me {v} in {eq}."])
        reworded, _ = build_agent_data(mix, small_data_dir, tmp_path / "out", progress=False)
        assert reworded != path and "Tell me" in reworded.read_text(encoding="utf-8")
    data = TrainData.build(DataConfig(train=[str(path)], format="openai", max_length=4096, pack=False), tiny_tokenizer, 0)
    assert not data.report.dropped
    gsm8k_row = next(r for r in data.rows if "tool_response" in tiny_tokenizer.decode(r.ids, skip_special_tokens=False))
    trained = tiny_tokenizer.decode([t for t in gsm8k_row.targets if t != -100], skip_special_tokens=False)
    assert trained.startswith('<tool_call>\n{"name": "python", "arguments": {"code": "') and "<|im_end|>The answer is" in trained
    for prompt_only in ("<tool_response>", "<tools>", "<|im_start|>user"):
        assert prompt_only not in trained


def _names(row: dict) -> list[str]:
    return [t["function"]["name"] for t in row["tools"]]


def test_distractor_tools_join_the_offered_set_without_changing_the_call(small_data_dir):
    import random

    schema = {"type": "function", "function": {"name": "get_stock_price", "parameters": {"type": "object", "properties": {}}}}
    row = {"messages": [], "tools": builtin_tools(["python", "solve"]).schemas()}
    offered = [_names(build.with_distractors(row, [schema, row["tools"][1]], random.Random(seed))) for seed in range(20)]
    assert all(sorted(names) == ["get_stock_price", "python", "solve"] for names in offered)  # a tool already offered is not repeated
    assert all(names.index("python") < names.index("solve") for names in offered)  # the row's own order is kept
    assert len({names.index("get_stock_price") for names in offered}) == 3  # the distractor lands anywhere

    rows, _ = build_rows(Mix(gsm8k=10, tasks=40, glaive=20, seed=0, distractors=1.0), small_data_dir, progress=False)
    math, chats = rows[:-20], rows[-20:]
    for chat in chats:  # every glaive chat also offers the math tools, and still calls only its own tools (or none)
        called = {c["function"]["name"] for m in chat["messages"] for c in m.get("tool_calls") or []}
        assert {"calculator", "solve"} <= set(_names(chat)) and not called & {"calculator", "solve", "python"}
    assert sum(any(m.get("tool_calls") for m in chat["messages"]) for chat in chats) > 10
    with_glaive_tool = [r for r in math if set(_names(r)) - {"python", "calculator", "solve"}]
    assert 0.25 * len(math) < len(with_glaive_tool) < 0.75 * len(math)  # about half of distractors=1.0
    for row in with_glaive_tool:
        assert row["messages"][1]["tool_calls"][0]["function"]["name"] in {"python", "calculator", "solve"}
    plain, _ = build_rows(Mix(gsm8k=10, tasks=40, glaive=20, seed=0, distractors=0.0), small_data_dir, progress=False)
    assert all(set(_names(r)) <= {"python", "calculator", "solve"} for r in plain[:-20])


def test_a_bad_data_dir_or_mix_is_named(tmp_path):
    with pytest.raises(ConfigError, match="PUYU_DATA_DIR"):
        build_rows(Mix(gsm8k=1, tasks=0, glaive=0), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="held out"):
        Mix(glaive=299)
    with pytest.raises(ConfigError, match="distractors"):
        Mix(distractors=1.5)
    with pytest.raises(ConfigError, match="discounts"):
        Mix(discounts=-0.1)


@pytest.fixture(scope="module")
def long_tiny_model(tmp_path_factory, tiny_tokenizer_dir):
    from tests.conftest import make_hf_model

    folder = tmp_path_factory.mktemp("agent_tuning") / "tiny"
    make_hf_model(folder, tiny_tokenizer_dir, max_position_embeddings=4096)
    return folder


def test_agent_tune_builds_trains_and_saves_an_adapter_the_agent_loads_by_name(long_tiny_model, small_data_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    from puyu.api import LLM
    from puyu.cli import main

    monkeypatch.setenv("PUYU_HOME", str(tmp_path / "home"))
    args = ["agent-tune", "--data-dir", str(small_data_dir), "--gsm8k", "6", "--tasks", "4", "--glaive", "2", f"model={long_tiny_model}",
            "data.max_length=4096", "train.max_steps=2", "train.precision=fp32", "monitor.sample_max_new_tokens=4",
            "monitor.tensorboard=false"]
    assert main(args) == 0
    assert "adapter saved as 'agent'" in capsys.readouterr().out
    adapter = tmp_path / "home" / "adapters" / "agent"
    assert (adapter / "adapter_config.json").exists()
    assert list((tmp_path / "home" / "data" / "agent_tuning").glob("agent_tuning-*.jsonl"))
    LLM(str(long_tiny_model), adapter="agent")  # a saved adapter loads by its name
    shutil.rmtree(adapter)
    assert main(["agent-tune", "--name", "../x"]) == 2
