"""A request inside the engine, and the events it produces.

A :class:`Sequence` carries the prompt, the tokens generated so far, how many
of them have keys/values in the cache (``num_computed``), its block table, its
:class:`~puyu.generation.output.SequenceOutput` (sampling state, text, stops)
and timing.  After a preemption its blocks are gone and ``num_computed`` is 0:
the prompt and the tokens generated so far are recomputed as one prefill, and
the text already streamed stays valid.  A prompt with images carries their
:class:`~puyu.model.vlm.prompt.PromptImages`: the runner prefills their vectors, and
the prefix cache keys the image positions by the pixels (:meth:`Sequence.cache_keys`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from puyu.generation.output import SequenceOutput, StepEvent, TokenLogprob

if TYPE_CHECKING:
    from puyu.model.vlm.prompt import PromptImages


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    request_id: str
    prompt: list[int]
    output: SequenceOutput
    max_new_tokens: int
    sink: Callable[[StepEvent], None]
    logprobs: int | None = None  # top alternatives per generated token (0 = chosen token only)
    prompt_logprobs: int | None = None
    tokens: list[int] = field(default_factory=list)
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    registered_blocks: int = 0  # full blocks already offered to the prefix cache
    status: Status = Status.WAITING
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    collected_prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    aborted: bool = False
    draft: list[int] = field(default_factory=list)  # speculative tokens computed with the pending one this step
    draft_pause: int = 0  # steps left without drafting (see puyu.engine.speculative)
    images: PromptImages | None = None

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)

    @property
    def num_generated(self) -> int:
        return len(self.tokens) - len(self.prompt)

    @property
    def remaining(self) -> int:
        """Tokens whose keys/values still have to be computed (not counting a draft)."""
        return len(self.tokens) - self.num_computed

    def cache_keys(self, n: int) -> list:
        """What the prefix cache keys the first ``n`` tokens by: the ids, with image positions keyed by their pixels."""
        return self.tokens[:n] if self.images is None else self.images.cache_keys(self.tokens[:n])

    def step_tokens(self, n: int) -> list[int]:
        """The ``n`` tokens this step computes: pending ones, then the draft."""
        return (self.tokens[self.num_computed :] + self.draft)[:n]
