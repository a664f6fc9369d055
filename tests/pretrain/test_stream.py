"""The shard stream: packed rows respect document boundaries, resume at the exact sample, mix by weight, split over ranks."""

from __future__ import annotations

import pytest
import torch

from puyu.data.packing import IGNORE
from puyu.data.shards import SourceShards
from puyu.data.stream import PretrainData
from puyu.errors import ConfigError


def rows_of(batches):
    """(tokens, targets, positions, mask) of every row of a list of batches."""
    out = []
    for b in batches:
        mask = b.mask if b.mask is not None else torch.ones(b.tokens.shape[1], b.tokens.shape[1]).tril().bool()[None, None].expand(
            b.tokens.shape[0], 1, -1, -1)
        out += [(b.tokens[i], b.targets[i], b.positions[i], mask[i, 0]) for i in range(b.tokens.shape[0])]
    return out


def test_packed_rows_never_cross_a_document_without_reset(shard_root):
    data = PretrainData(shard_root, 48, {"en": 1, "zh": 1, "lines": 2}, seed=3)
    docs = {name: SourceShards.open(shard_root, name) for name in ("en", "zh", "lines")}
    all_docs = {tuple(s.tokens(i).tolist()) for s in docs.values() for i in range(len(s))}
    boundaries = 0
    for step in range(12):
        batches, total = data.micro_batches(step, 2, 2)
        assert total == sum(b.trained_tokens for b in batches)
        for tokens, targets, positions, mask in rows_of(batches):
            starts = (positions == 0).nonzero().flatten().tolist() + [len(tokens)]
            boundaries += len(starts) - 2
            segment = torch.zeros(len(tokens), dtype=torch.long)
            for s, (a, b) in enumerate(zip(starts, starts[1:])):
                segment[a:b] = s
                assert positions[a:b].tolist() == list(range(b - a))  # positions restart at every document
                assert targets[a : b - 1].tolist() == tokens[a + 1 : b].tolist()  # next token inside the document
                piece = tuple(tokens[a:b].tolist())
                assert any(piece == d[i : i + len(piece)] for d in all_docs for i in range(len(d) - len(piece) + 1))
            for a in starts[1:-1]:
                assert targets[a - 1] == IGNORE  # no target across a boundary
            expected = (segment[:, None] == segment[None, :]) & torch.ones(len(tokens), len(tokens)).tril().bool()
            assert torch.equal(mask, expected)  # block-diagonal causal attention
    assert boundaries > 20  # the rows really were packed with several documents


def test_every_document_is_read_once_per_epoch_in_a_seeded_order(shard_root):
    data = PretrainData(shard_root, 32, {"zh": 1}, seed=5)
    source = data.sources[0]
    per_epoch = source.shards.num_tokens
    seen = []
    while source.cursor.epoch == 0:
        batches, _ = data.micro_batches(data.next_step, 1, 1)
        seen.append(batches[0].tokens[0])
    stream = torch.cat(seen)[:per_epoch].tolist()
    order = source.order(0).tolist()
    assert stream == [t for d in order for t in source.shards.tokens(d).tolist()][: len(stream)]
    assert len(stream) == per_epoch and sorted(order) == list(range(len(source.shards)))
    assert order != sorted(order) and source.order(1).tolist() != order  # shuffled, differently each epoch


def test_resuming_mid_epoch_yields_the_same_sample_stream(shard_root):
    straight = PretrainData(shard_root, 40, {"en": 1, "lines": 2}, seed=7)
    expected = [straight.micro_batches(s, 3, 2) for s in range(9)]

    first = PretrainData(shard_root, 40, {"en": 1, "lines": 2}, seed=7)
    for s in range(4):
        first.micro_batches(s, 3, 2)
    state = first.state_dict()
    lines = state["cursors"]["lines"]
    assert 0 < lines[1] < len(first.sources[1].shards) and lines[0] == 0  # mid-epoch
    assert state["cursors"]["en"][2] > 0  # and in the middle of a long document
    resumed = PretrainData(shard_root, 40, {"en": 1, "lines": 2}, seed=7)
    resumed.load_state_dict(state)
    for s in range(4, 9):
        batches, total = resumed.micro_batches(s, 3, 2)
        assert total == expected[s][1]
        for got, want in zip(rows_of(batches), rows_of(expected[s][0])):
            assert all(torch.equal(g, w) for g, w in zip(got, want))
    with pytest.raises(ValueError, match="in order"):
        resumed.micro_batches(3, 3, 2)


def test_mixture_weights_are_token_shares_and_seeded(shard_root):
    def sources(seed):
        data = PretrainData(shard_root, 16, {"en": 3, "zh": 1}, seed=seed)
        return [data._source_of(k).shards.name for k in range(2000)]

    picks = sources(0)
    assert 0.72 < picks.count("en") / len(picks) < 0.78
    assert picks == sources(0) and picks != sources(1)
    default = PretrainData(shard_root, 16)  # no mixture: every source by its token count
    sizes = [s.shards.num_tokens for s in default.sources]
    assert default.weights.tolist() == pytest.approx([n / sum(sizes) for n in sizes])


def test_ranks_split_the_global_batch_of_one_process(shard_root):
    one = PretrainData(shard_root, 32, seed=2)
    ranks = [PretrainData(shard_root, 32, seed=2) for _ in range(2)]
    for step in range(5):
        batches, total = one.micro_batches(step, 2, 2)
        parts = [r.micro_batches(step, 1, 2, rank=i, world=2) for i, r in enumerate(ranks)]
        assert all(t == total for _, t in parts)
        for m in range(2):
            for i in range(2):
                assert torch.equal(parts[i][0][m].tokens[0], batches[m].tokens[i])
                assert torch.equal(parts[i][0][m].targets[0], batches[m].targets[i])


def test_validation_rows_come_from_the_held_out_split(shard_root):
    data = PretrainData(shard_root, 32, {"en": 1, "zh": 1}, val_rows=6)
    val_docs = {tuple(SourceShards.open(shard_root, n, "val").tokens(i).tolist())
                for n in ("en", "zh") for i in range(len(SourceShards.open(shard_root, n, "val")))}
    assert len(data.val_rows) == 6
    first = data.val_rows[0]
    piece = tuple(first.ids[: first.positions.index(0, 1)] if 0 in first.positions[1:] else first.ids)
    assert any(piece == d[: len(piece)] for d in val_docs)
    assert sum(b.tokens.shape[0] for b in data.val_batches(4)) == 6


def test_bad_mixtures_are_named(shard_root, tmp_path):
    with pytest.raises(ConfigError, match="does not hold"):
        PretrainData(shard_root, 32, {"en": 1, "web": 1})
    with pytest.raises(ConfigError, match="not all 0"):
        PretrainData(shard_root, 32, {"en": 0})
    with pytest.raises(ConfigError, match="puyu tokenizer shards"):
        PretrainData(tmp_path, 32)
