"""The self_cognition recipe on the built-in model: afterwards it answers held-out "who are you?" phrasings with its new name.

Trained on the English rows of identity.json (the first 16; the rest are Chinese and
only lengthen the run), packed, for a few CPU minutes.  The rate is printed (run with -s).
"""

from __future__ import annotations

import pytest

from puyu import LLM
from puyu.train.config import load_recipe
from puyu.train.trainer import Trainer
from tests.conftest import DATASETS

HELD_OUT = [
    "Who are you, exactly?",
    "What's your name?",
    "Please introduce yourself.",
    "Tell me who you are.",
    "What should I call you?",
    "Which assistant am I talking to?",
]


@pytest.mark.builtin
def test_self_cognition_gives_the_model_its_new_name(tmp_path, builtin_llm):
    recipe = load_recipe("self_cognition", [f"data.data_dir={DATASETS}", "data.limit=16", "data.max_length=128", "train.epochs=6",
                                            "train.batch_size=2", f"output_dir={tmp_path / 'run'}", "monitor.sample_prompts=[]",
                                            "monitor.tensorboard=false"])
    before = [builtin_llm.chat(q, temperature=0, max_new_tokens=24) for q in HELD_OUT]
    assert not any("Puyu" in reply for reply in before)

    result = Trainer(recipe).fit()
    tuned = LLM("smollm2-135m-instruct", dtype="float32", device="cpu", adapter=result.output)
    replies = [tuned.chat(q, temperature=0, max_new_tokens=24) for q in HELD_OUT]
    rate = sum("Puyu" in reply for reply in replies) / len(HELD_OUT)
    print(f"\nself-cognition: {rate:.0%} of held-out phrasings answer with the new name")
    for question, reply in zip(HELD_OUT, replies):
        print(f"  {question!r} -> {reply!r}")
    assert rate >= 0.66
