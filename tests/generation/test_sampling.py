"""Each sampling control on hand-made logits, seeds, and parameter validation."""

from __future__ import annotations

import pytest
import torch

from puyu.errors import ConfigError
from puyu.generation.sampling import SamplingParams, SequenceState, filter_logits, sample_next

LOGITS = torch.tensor([3.0, 2.0, 1.0, 0.0])  # softmax: 0.644, 0.237, 0.087, 0.032


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, v in enumerate(logits.tolist()) if v != float("-inf")]


def test_top_k_top_p_min_p():
    assert kept(filter_logits(LOGITS, top_k=2, top_p=1, min_p=0)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=0.7, min_p=0)) == [0, 1]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=0.5, min_p=0)) == [0]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=0.95, min_p=0)) == [0, 1, 2]
    assert kept(filter_logits(LOGITS, top_k=0, top_p=1, min_p=0.2)) == [0, 1]
    assert kept(filter_logits(LOGITS.flip(0), top_k=0, top_p=0.5, min_p=0)) == [3]  # order of the vocabulary does not matter


def state(**params) -> SequenceState:
    return SequenceState(SamplingParams(**params), prompt=[1], vocab_size=4, device=torch.device("cpu"))


def test_greedy_is_argmax():
    assert sample_next(torch.stack([LOGITS, LOGITS.flip(0)]), [state(temperature=0), state(temperature=0)]) == [0, 3]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    s = state(temperature=0, repetition_penalty=4.0)  # token 1 is in the prompt
    logits = torch.tensor([1.0, 3.0, -1.0, 0.5])
    assert sample_next(logits[None], [s]) == [0]  # 3/4 < 1
    s.record(0)
    s.record(2)
    assert sample_next(torch.tensor([[1.0, 3.0, -1.0, 0.8]]), [s]) == [3]  # 0.25, 0.75, -4 vs 0.8


def test_presence_and_frequency_penalties_count_output_tokens():
    s = state(temperature=0, presence_penalty=0.5, frequency_penalty=0.5)
    for _ in range(2):
        s.record(0)
    # token 0: 3 - 0.5 - 2 * 0.5 = 1.5 < 2
    assert sample_next(LOGITS[None], [s]) == [1]


def test_seeded_sampling_repeats_and_follows_the_distribution():
    def draws(seed):
        return [sample_next(LOGITS[None], [s])[0] for s in [state(temperature=1, top_p=1, seed=seed)] for _ in range(400)]

    a, b, c = draws(7), draws(7), draws(8)
    assert a == b and a != c
    freq0 = a.count(0) / len(a)
    assert 0.55 < freq0 < 0.73  # p = 0.644


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-1), dict(min_p=2), dict(max_new_tokens=-1),
                                 dict(repetition_penalty=0), dict(presence_penalty=3)])
def test_bad_parameters_name_themselves(bad):
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=name):
        SamplingParams(**bad)
