"""Every shipped task loads its real data from the data dir and renders the golden prompt of its first example."""

from __future__ import annotations

import pytest

from puyu.errors import ConfigError, DatasetError
from puyu.eval.prompts import prepare, uses_own_rows
from puyu.eval.tasks import fewshot_pool, list_tasks, load_examples, load_task
from tests.conftest import DATASETS

# task: (example id, prompt start, prompt end, first request's continuation or None, gold, rows)
GOLDEN = {
    "arc_easy": ("0", "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:", None,
                 " Sunlight is the source of energy for nearly all ecosystems.", 0, 2376),
    "arc_challenge": ("0", "Question: An astronomer observes that a planet rotates faster", "rotation?\nAnswer:",
                      " Planetary density will decrease.", 2, 1172),
    "hellaswag": ("0", "Roof shingle removal: A man is sitting on a roof. he", None, " is using wrap to wrap a pair of skis.", 3, 10042),
    "piqa": ("0", "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:", None,
             " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need "
             "to supply it with a water bottle and a food dish.", 0, 1838),
    "boolq": ("0", "All biomass goes through", "\nQuestion: does ethanol take more energy make that produces?\nAnswer:", " no", 0, 3270),
    "winogrande": ("0", "Sarah was a much better surgeon than Maria so Maria", None, " always got the easier cases.", 1, 1267),
    "siqa": ("0", "Context: Tracy didn't go home that evening and resisted Riley's attacks.\nQuestion:",
             "\nChoices:\nA. make a new plan\nB. Find somewhere to go\nAnswer:", " A", 1, 1954),
    "openbookqa": ("0", "A person wants to start saving money", "the best way to save money is to", " make more phone calls", 1, 500),
    "commonsense_qa": ("0", "Question: A revolving door is convenient",
                       "\nChoices:\nA. bank\nB. department store\nC. mall\nD. new york\nAnswer:", " A", 0, 1221),
    "copa": ("0", "The man turned on the faucet, therefore", None, " the toilet filled with water.", 1, 100),
    "lambada": ("0", "In my palm is a clear stone", "his mouth curved in a confident grin, I don't care about", " signs", "signs", 5153),
    "truthfulqa_mc": ("0", "Q: What is human life expectancy in the United States?\n"
                           "A: Human life expectancy in the United States is 78 years.\n\n",
                      "Spain.\n\nQ: What happens to you if you eat watermelon seeds?\nA:",
                      " The watermelon seeds pass through your digestive system", 0, 817),
    "mmlu": ("abstract_algebra/0",
             "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind all c in Z_3",
             "sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:", " A", 1, 14042),
    "ceval": ("accountant/0", "以下是中国关于注册会计师考试的单项选择题，请选出其中的正确答案。\n\n甲公司是国内一家上市公司。",
              "可以自由做出减征、停征或免征税款的决定\n答案：", " A", 3, 1346),
    "cmmlu": ("agronomy/1", "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                            "题目：肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案是： C\n\n",
              "\nA. 农业生产工具\nB. 土地\nC. 劳动力\nD. 资金\n答案是：", " A", 1, 11582),
    "agieval_zh": ("gaokao-biology/0", "问题：已知(1)酶、(2)抗体、(3)激素", "(D)(4)(5)(6)都是人体细胞内的主要能源物质\n答案：",
                   " A", 2, 2605),
    "gsm8k": ("0", "Question: ", "How much in dollars does she make every day at the farmers' market?\nAnswer:", None, "18", 1319),
    "bbh": ("boolean_expressions/0",
            "Evaluate the result of a random Boolean expression.\n\nQ: not ( ( not not True ) ) is\nA: Let's think step by step.",
            "So the answer is True.\n\nQ: not ( True ) and ( True ) is\nA: Let's think step by step.", None, "False", 6511),
    "humaneval": ("0", "from typing import List\n\n\ndef has_close_elements(", '    True\n    """\n', None, None, 164),
    "mbpp": ("10", "You are an expert Python programmer, and here is your task: Write a function to find the s",
             'assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n', None, None, 500),
    "wiki_demo": ("0", "Anarchism is a political philosophy", "SocialismFar-left politics", None, None, 30),
    "mt_bench": ("0", "Compose an engaging travel blog post about a recent trip to Hawaii",
                 "cultural experiences and must-see attractions.", None, None, 80),
}


def test_every_task_has_a_golden_case():
    assert set(GOLDEN) == set(list_tasks())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_task_renders_golden_prompt(name):
    example_id, start, end, continuation, gold, rows = GOLDEN[name]
    spec = load_task(name)
    examples = load_examples(spec, DATASETS)
    assert len(examples) == rows
    example = examples[0]
    assert example.id == example_id
    pool = fewshot_pool(spec, DATASETS, example.subset)
    if spec.shots and uses_own_rows(spec):
        pool = [e.doc for e in examples]
    prepared = prepare(spec, example, pool)
    assert prepared.prompt.startswith(start)
    assert prepared.prompt.endswith(end or start)
    if continuation is not None:
        assert prepared.requests[0][1] == continuation
    if name not in ("humaneval", "mbpp", "wiki_demo"):
        assert prepared.gold == gold


def test_few_shot_mmlu_uses_the_dev_rows_in_order():
    spec = load_task("mmlu", shots=2)
    example = load_examples(spec, DATASETS)[0]
    prompt = prepare(spec, example, fewshot_pool(spec, DATASETS, example.subset)).prompt
    assert prompt.count("\nAnswer:") == 3 and prompt.count("Answer: ") == 2


def test_gen_mode_and_limit_sampling():
    spec = load_task("ceval", mode="gen", shots=0)
    assert spec.output == "generate" and spec.main_metric == "exact_match"
    first = [e.id for e in load_examples(spec, DATASETS, limit=20)]
    assert first == [e.id for e in load_examples(spec, DATASETS, limit=20)] and len(set(first)) == 20
    assert len({i.split("/")[0] for i in first}) > 5  # sampled across subjects, not the first file


def test_unknown_task_and_mode_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown task 'nope'.*known tasks: agieval_zh"):
        load_task("nope")
    with pytest.raises(ConfigError, match="task gsm8k has no mode 'ppl'"):
        load_task("gsm8k", mode="ppl")


def test_missing_data_dir_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=f"no data files match {tmp_path}/eval/icl_gauntlet/arc_easy.jsonl"):
        load_examples(load_task("arc_easy"), tmp_path)


def test_malformed_rows_name_file_and_line(tmp_path):
    folder = tmp_path / "eval" / "icl_gauntlet"
    folder.mkdir(parents=True)
    path = folder / "arc_easy.jsonl"
    path.write_text('{"query": "Question: ok", "choices": ["a", "b"], "gold": 0}\n{"query": broken\n')
    with pytest.raises(DatasetError, match=f"{path}:2: not valid JSON"):
        load_examples(load_task("arc_easy"), tmp_path)
    path.write_text('{"query": "Question: ok", "choices": ["a", "b"], "gold": 0}\n{"choices": ["a"], "gold": 0}\n')
    with pytest.raises(DatasetError, match=f"{path}:2: task arc_easy: row lacks query"):
        load_examples(load_task("arc_easy"), tmp_path)
    path.write_text('{"query": "Question: ok", "choices": ["a", "b"], "gold": 5}\n')
    example = load_examples(load_task("arc_easy"), tmp_path)[0]
    with pytest.raises(DatasetError, match=f"{path}:1: task arc_easy: gold 5 is not an index into 2 choices"):
        prepare(load_task("arc_easy"), example, [])
