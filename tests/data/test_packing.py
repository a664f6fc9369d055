"""Loss masks per format, truncation that is never silent, and packing without cross-contamination."""

from __future__ import annotations

import logging

import torch

from puyu.data import IGNORE, Sample, collate, pack, tokenize_samples
from puyu.data.packing import single_rows
from puyu.train.objective import LMObjective

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Bye."}]
TOOLS = [{"role": "user", "content": "Add 1 and 2"},
         {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]},
         {"role": "tool", "content": "3"}, {"role": "assistant", "content": "It is 3."}]


def trained_text(tokenizer, example) -> str:
    """The text of the tokens that are targets (targets[i] is token i+1)."""
    return tokenizer.decode([t for t in example.targets if t != IGNORE], skip_special_tokens=False)


def test_loss_only_on_assistant_tokens(tiny_tokenizer):
    samples = [Sample("a", CHAT), Sample("b", TOOLS, tools=[{"type": "function", "function": {"name": "add"}}])]
    (chat, tools), report = tokenize_samples(samples, tiny_tokenizer, 512)
    assert trained_text(tiny_tokenizer, chat) == "Hello there!<|im_end|>Bye.<|im_end|>"
    assert trained_text(tiny_tokenizer, tools) == ('<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><|im_end|>'
                                                   "It is 3.<|im_end|>")
    assert not report.truncated and not report.dropped
    (everything,), _ = tokenize_samples([Sample("a", CHAT)], tiny_tokenizer, 512, train_on_prompt=True)
    assert sum(t != IGNORE for t in everything.targets) == len(everything.ids) - 1


def test_raw_text_is_chunked_not_truncated(tiny_tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    examples, _ = tokenize_samples([Sample("t", text=text)], tiny_tokenizer, 32)
    ids = tiny_tokenizer.encode(text) + [tiny_tokenizer.eos_id]
    assert [i for e in examples for i in e.ids] == ids and all(len(e.ids) <= 32 for e in examples)
    assert all(e.targets[:-1] == e.ids[1:] and e.targets[-1] == IGNORE for e in examples)


def test_truncation_is_reported_and_reply_less_samples_dropped(tiny_tokenizer, caplog):
    long_prompt = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    long_reply = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 200}]
    with caplog.at_level(logging.WARNING):
        examples, report = tokenize_samples([Sample("f:1", long_prompt), Sample("f:2", long_reply)], tiny_tokenizer, 64)
    assert report.dropped == ["f:1"] and report.truncated == ["f:2"]
    assert len(examples) == 1 and len(examples[0].ids) == 64 and examples[0].trained_tokens > 0
    assert "dropped" in caplog.text and "f:1" in caplog.text and "f:2" in caplog.text


def test_packed_rows_equal_separate_samples(tiny_llm):
    tokenizer = tiny_llm.tokenizer
    samples = [Sample("a", CHAT), Sample("b", TOOLS), Sample("c", text="Hello world! How are you today?"),
               Sample("d", [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好，世界！"}])]
    examples, _ = tokenize_samples(samples, tokenizer, 256)
    rows = pack(examples, 256)
    assert len(rows) < len(examples)
    assert sorted(t for r in rows for t in r.ids) == sorted(t for e in examples for t in e.ids)
    packed = collate(rows, pad_id=0)
    assert packed.mask is not None and packed.positions[0, 0] == 0
    starts = [i for i, p in enumerate(packed.positions[0].tolist()) if p == 0]
    assert len(starts) >= 2  # positions restart for every packed sample
    objective = LMObjective(tiny_llm.model)
    with torch.no_grad():
        together = objective(packed.tokens, packed.targets, packed.positions, packed.mask)
        apart = sum(objective(b.tokens, b.targets, b.positions, b.mask) for b in (collate([r], 0) for r in single_rows(examples)))
    assert torch.allclose(together, apart, rtol=1e-5)
    # The mask is block-diagonal and causal: a token never sees an earlier packed sample.
    mask = packed.mask[0, 0]
    assert not mask[starts[1], starts[1] - 1] and mask[starts[1], starts[1]] and not mask[0, 1]


def test_block_by_block_attention_equals_the_dense_mask_with_gradients(tiny_llm):
    """On a CPU a packed batch's block-diagonal causal mask runs as one causal SDPA per example; values and gradients
    equal those of the dense mask, and a mask of another form (a shared prefix) keeps the dense path."""
    from puyu.model.transformer import CausalBlocks

    tokenizer, model = tiny_llm.tokenizer, tiny_llm.model
    samples = [Sample("a", CHAT), Sample("b", TOOLS), Sample("c", text="Hello world! How are you today?"), Sample("d", text="Bye.")]
    examples, _ = tokenize_samples(samples, tokenizer, 256)
    packed = collate(pack(examples, 96), pad_id=0)  # several rows, examples side by side, padding after some
    blocks = CausalBlocks.from_mask(packed.mask)
    assert blocks is not None and any(len(spans) > 1 for spans in blocks.rows)
    assert all(spans[0][0] == 0 and spans[-1][1] == packed.tokens.shape[1] for spans in blocks.rows)
    objective = LMObjective(model.train(False))
    results = []
    for in_blocks in (True, False):
        model.attend_in_blocks = in_blocks
        model.zero_grad()
        for p in model.parameters():
            p.requires_grad_(True)
        loss = objective(packed.tokens, packed.targets, packed.positions, packed.mask)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    model.attend_in_blocks = True
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))
    shared = packed.mask.clone()
    row = next(i for i, spans in enumerate(blocks.rows) if len(spans) > 1)
    shared[row, 0, -1, 0] = True  # the last token also sees the first example's first: not causal within blocks
    assert CausalBlocks.from_mask(shared) is None


def test_shared_prefix_rows_train_each_sample_as_alone(tiny_llm):
    """Chats that begin with the same system prompt share it in a row: fewer tokens, the same loss and gradients."""
    tokenizer, model = tiny_llm.tokenizer, tiny_llm.model
    tools = [{"type": "function", "function": {"name": "python", "description": "Run Python code and return what it prints.",
                                               "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}}}]
    system = {"role": "system", "content": "You are a careful assistant. Use the tools when a question needs computing."}
    asked = ["What is 2+3?", "Solve 2x+3=10.", "已知2x+3=10，求x", "How many legs do 3 spiders have?", "Convert 5 km to miles."]
    samples = [Sample(f"q{i}", [system, {"role": "user", "content": q}, {"role": "assistant", "content": f"Answer {i}."}], tools=tools)
               for i, q in enumerate(asked)]
    samples += [Sample("other", CHAT), Sample("text", text="Hello world! How are you today?")]
    examples, _ = tokenize_samples(samples, tokenizer, 2048)
    plain, shared = pack(examples, 2048), pack(examples, 2048, share_prefix=True)
    assert sum(len(r.ids) for r in shared) < sum(len(r.ids) for r in plain) - 3 * 32
    assert all(len(r.ids) <= 2048 for r in shared) and shared == pack(examples, 2048, share_prefix=True)
    trained = sorted(t for e in examples for t in e.targets if t != IGNORE)
    assert sorted(t for r in shared for t in r.targets if t != IGNORE) == trained

    row = next(r for r in shared if r.shares)
    length = row.segments.index(1)
    member = next(e for e in examples if e.ids[:length] == row.ids[:length] and e.ids[length:] == row.ids[length:][: len(e.ids) - length])
    assert row.positions[length] == length and all(t == IGNORE for t in row.targets[:length])
    assert all(t == IGNORE for t in member.targets[:length])
    batch = collate([row], 0)
    mask = batch.mask[0, 0]
    second = row.segments.index(2)
    assert mask[second, 0] and mask[second, length - 1] and not mask[second, second - 1] and mask[second, second]

    def loss_and_grads(rows):
        model.zero_grad()
        loss = sum(LMObjective(model)(b.tokens, b.targets, b.positions, b.mask) for b in (collate([r], 0) for r in rows))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    for p in model.parameters():
        p.requires_grad_(True)
    (together, grads), (apart, reference) = loss_and_grads(shared), loss_and_grads(single_rows(examples))
    assert torch.allclose(together, apart, rtol=1e-5)
    assert all(torch.allclose(grads[n], reference[n], atol=1e-5, rtol=1e-4) for n in grads)


def test_a_prefix_with_trained_tokens_is_never_shared(tiny_tokenizer):
    samples = [Sample(f"s{i}", [{"role": "system", "content": "Same long system prompt for everyone. " * 6},
                                {"role": "user", "content": f"Question {i}"}, {"role": "assistant", "content": "Yes."}]) for i in range(4)]
    examples, _ = tokenize_samples(samples, tiny_tokenizer, 512, train_on_prompt=True)
    assert not any(r.shares for r in pack(examples, 512, share_prefix=True))
    examples, _ = tokenize_samples(samples, tiny_tokenizer, 512)
    assert any(r.shares for r in pack(examples, 512, share_prefix=True))
