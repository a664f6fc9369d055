"""Block manager and scheduler without a model: admission, chunked prefill, preemption,
prefix sharing, finishing."""

from __future__ import annotations

from puyu.engine.blocks import BlockManager
from puyu.engine.scheduler import Scheduler
from puyu.engine.sequence import Sequence, Status


def seq(name: str, n: int, start: int = 0, arrival: float = 0.0) -> Sequence:
    s = Sequence(name, list(range(start, start + n)), output=None, max_new_tokens=100, sink=lambda e: None)
    s.arrival = arrival
    return s


def step(scheduler: Scheduler):
    """Schedule, pretend the model ran, and give every sequence that finished its prompt a new token."""
    scheduled, starved = scheduler.schedule()
    for s, n in scheduled:
        scheduler.computed(s, n)
        if s.remaining == 0:
            s.tokens.append(7)
    return {s.request_id: n for s, n in scheduled}, starved


def test_blocks_free_list_and_reference_counts():
    blocks = BlockManager(4, block_size=4)
    a = blocks.allocate(3)
    assert blocks.num_free == 1 and blocks.usage == 0.75
    blocks.release(a)
    assert blocks.num_free == 4


def test_new_requests_join_the_running_batch_and_long_prompts_are_chunked():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=16)
    scheduler.add(seq("a", 40))
    assert step(scheduler)[0] == {"a": 16}
    scheduler.add(seq("b", 5, start=1000, arrival=1))
    assert step(scheduler)[0] == {"a": 16}  # the budget is spent on a's prefill
    assert step(scheduler)[0] == {"a": 8, "b": 5}  # a's last chunk and b's prompt together
    assert step(scheduler)[0] == {"a": 1, "b": 1}  # both decode


def test_batch_cap_keeps_requests_waiting():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        scheduler.add(seq(str(i), 4, arrival=i))
    assert set(step(scheduler)[0]) == {"0", "1"} and len(scheduler.waiting) == 1


def test_the_newest_sequence_is_preempted_when_blocks_run_out_and_recomputed_later():
    blocks = BlockManager(4, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=100)
    old, new = seq("old", 8), seq("new", 7, start=100, arrival=1)
    scheduler.add(old)
    scheduler.add(new)
    assert step(scheduler)[0] == {"old": 8, "new": 7}  # 2 + 2 blocks: the pool is full
    # old has 9 tokens (needs a 3rd block to decode): new is preempted to make room
    assert step(scheduler)[0] == {"old": 1}
    assert new.status is Status.WAITING and new.num_computed == 0 and new.block_table == [] and scheduler.waiting[0] is new
    assert scheduler.preemptions == 1
    scheduler.finish(old)
    assert blocks.num_free == 4
    # Its prompt and the token it generated are recomputed, except the full block the prefix cache kept.
    assert step(scheduler)[0] == {"new": 4} and new.num_computed == 8


def test_a_sequence_alone_without_room_is_reported_not_looped():
    scheduler = Scheduler(BlockManager(2, block_size=4), max_num_seqs=8, max_num_batched_tokens=100)
    s = seq("big", 8)
    scheduler.add(s)
    step(scheduler)
    assert step(scheduler)[1] == [s]


def test_shared_prefix_reuses_blocks():
    blocks = BlockManager(16, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=8, max_num_batched_tokens=100)
    first = seq("first", 10)
    scheduler.add(first)
    step(scheduler)
    second = Sequence("second", list(range(10)) + [99, 98], output=None, max_new_tokens=5, sink=lambda e: None)
    scheduler.add(second)
    assert step(scheduler)[0] == {"first": 1, "second": 4}  # 8 cached tokens (2 full blocks) skipped
    assert second.block_table[:2] == first.block_table[:2]
    assert blocks.ref[first.block_table[0]] == 2 and blocks.prefix_hits == 2
    scheduler.finish(first)
    scheduler.finish(second)
    assert blocks.num_free == 16


def test_finish_frees_waiting_and_running_sequences():
    blocks = BlockManager(8, 4)
    scheduler = Scheduler(blocks, max_num_seqs=1, max_num_batched_tokens=100)
    a, b = seq("a", 6), seq("b", 6, arrival=1)
    scheduler.add(a)
    scheduler.add(b)
    step(scheduler)
    scheduler.finish(b)  # still waiting
    scheduler.finish(a)
    assert not scheduler.has_work() and blocks.num_free == 8
