"""LoRA, QLoRA and full fine-tuning each learn on a tiny model and change exactly the weights they should."""

from __future__ import annotations

import pytest
import torch

from puyu.data.dataset import TrainData
from puyu.model import load_model
from puyu.model.lora import LoRALinear, add_lora, lora_modules, merge_lora
from puyu.model.nf4 import NF4_LEVELS, NF4Linear
from puyu.train.config import LoraConfig
from puyu.train.objective import LMObjective, prepare_model


def mean_loss(objective: LMObjective, data: TrainData) -> float:
    with torch.no_grad():
        batches = [b for step in range(2) for b in data.micro_batches(step, 4, 1)[0]]
        return sum(float(objective(b.tokens, b.targets, b.positions, b.mask)) for b in batches) / sum(b.trained_tokens for b in batches)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_method_learns_and_touches_only_its_weights(tiny_recipe, method):
    recipe = tiny_recipe(method, "lora.dropout=0.0", "optim.lr=5e-3", "optim.warmup_steps=0", "optim.schedule=constant")
    model, tokenizer = load_model(recipe.model, dtype="float32", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = prepare_model(model, recipe.method, recipe.lora, "fp32")
    objective = LMObjective(model).train()
    data = TrainData.build(recipe.data, tokenizer, 0)
    start = mean_loss(objective, data)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for step in range(30):
        batches, total = data.micro_batches(step % 2, 4, 1)
        for b in batches:
            (objective(b.tokens, b.targets, b.positions, b.mask) / total).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert mean_loss(objective, data) < start - 0.5

    after = model.state_dict()
    if method == "full":
        assert set(trainable) == {n for n, _ in model.named_parameters()}
        assert all(not torch.equal(before[k], after[k]) for k in before)
        return
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 7 * model.config.num_layers  # A and B on every projection of every layer
    for name, layer in lora_modules(model).items():
        assert layer.lora_B.weight.abs().sum() > 0, f"{name} did not learn"
        assert isinstance(layer.base, NF4Linear if method == "qlora" else torch.nn.Linear)
        if method == "lora":
            assert torch.equal(layer.base.weight, before[name + ".weight"])
    untouched = [k for k in before if not any(k.startswith(p + ".") for p in lora_modules(model))]
    assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)


def test_nf4_quantization_is_close_and_uses_the_code_book():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128)
    for double in (False, True):
        q = NF4Linear(linear, block_size=64, double_quant=double)
        w = q.dequantize()
        if not double:  # every value is a code-book level times its block's absmax
            scale = linear.weight.detach().reshape(-1, 64).abs().amax(1, keepdim=True)
            normalized = (w.reshape(-1, 64) / scale).reshape(-1, 1)
            assert (normalized - NF4_LEVELS).abs().amin(1).max() < 1e-5
        error = (w - linear.weight).abs().mean() / linear.weight.abs().mean()
        assert error < 0.12, error
        assert q.packed.numel() == linear.weight.numel() // 2 and q.packed.dtype == torch.uint8
        x = torch.randn(3, 256, requires_grad=True)
        q(x).sum().backward()
        assert torch.allclose(x.grad, w.sum(0).expand(3, -1), atol=1e-5)  # dx = dy W with the dequantized W


def test_lora_update_formula_and_merge():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    layer = LoRALinear(base, r=4, alpha=8, dropout=0.0)
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(5, 16)
    expected = base(x) + 2.0 * (x @ layer.lora_A.weight.t() @ layer.lora_B.weight.t())
    assert torch.allclose(layer(x), expected, atol=1e-5)
    model = torch.nn.Sequential(layer)
    merge_lora(model)
    assert isinstance(model[0], torch.nn.Linear) and torch.allclose(model[0](x), expected, atol=1e-5)


def test_lora_starts_from_the_base_model(tiny_llm):
    tokens = torch.tensor([[5, 6, 7, 8]])
    reference = tiny_llm.model(tokens)
    add_lora(tiny_llm.model, LoraConfig(r=4, targets=["q_proj", "v_proj"]))
    assert torch.equal(tiny_llm.model(tokens), reference)  # B = 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_objective_equals_cross_entropy_of_the_model_logits(tiny_recipe, method):
    recipe = tiny_recipe(method)
    model, tokenizer = load_model(recipe.model, dtype="float32", device="cpu")
    prepare_model(model, recipe.method, recipe.lora, "fp32")
    objective = LMObjective(model)
    head = model.lm_head
    b = TrainData.build(recipe.data, tokenizer, 0).micro_batches(0, 4, 1)[0][0]
    loss = objective(b.tokens, b.targets, b.positions, b.mask)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    logits = model(b.tokens, b.positions, mask=b.mask)
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b.targets.flatten(), ignore_index=-100, reduction="sum")
    reference.backward()
    assert model.lm_head is head
    assert torch.allclose(loss, reference, rtol=1e-5)
    assert all(torch.allclose(ours[n], p.grad, atol=1e-5) for n, p in model.named_parameters() if p.requires_grad)


def test_fused_head_cross_entropy_matches_the_reference(monkeypatch):
    import puyu.train.objective as objective

    monkeypatch.setattr(objective, "head_chunk_rows", lambda hidden, itemsize, trains: 3)  # several chunks
    torch.manual_seed(0)
    hidden = torch.randn(10, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (10,))
    ours = objective.LinearCrossEntropy.apply(hidden, weight, targets, objective.head_chunk)
    (ours * 0.5).backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    reference = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (reference * 0.5).backward()
    assert torch.allclose(ours, reference, atol=1e-4)
    assert torch.allclose(ours_grads[0], hidden.grad, atol=1e-5) and torch.allclose(ours_grads[1], weight.grad, atol=1e-5)


def test_compiled_layers_train_as_eager_does(tiny_recipe):
    """``train.compile`` (compiled layers and LM-head loss, gradient checkpointing over the compiled layers) ends with
    the eager run's adapter."""
    from safetensors.torch import load_file

    from puyu.train.trainer import Trainer

    common = ("train.max_steps=3", "lora.dropout=0.0")
    eager = Trainer(tiny_recipe("lora", *common, run="eager")).fit()
    compiled = Trainer(tiny_recipe("lora", *common, "train.compile=true", "train.grad_checkpointing=true", run="compiled")).fit()
    assert compiled.train_loss == pytest.approx(eager.train_loss, rel=1e-4)
    expected, got = (load_file(r.output / "adapter_model.safetensors") for r in (eager, compiled))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-5, rtol=1e-3), key
    assert any(v.abs().sum() > 0 for k, v in got.items() if "lora_B" in k)


def test_sparse_dropout_mask_is_iid_bernoulli_with_the_dropout_scale():
    from puyu.model.lora import SparseDropout, bernoulli_mask

    torch.manual_seed(0)
    p, rows, width = 0.05, 4000, 500
    masks = torch.stack([bernoulli_mask(torch.Size([width]), p) for _ in range(rows)]).double()
    sigma = (p * (1 - p) / masks.numel()) ** 0.5
    assert abs(masks.mean().item() - p) < 5 * sigma
    per_position = masks.mean(0)  # no position is favoured (the end of the range included)
    assert (per_position - p).abs().max() < 6 * (p * (1 - p) / rows) ** 0.5
    both = (masks[:, 1:] * masks[:, :-1]).mean().item()  # neighbours independent: P(both) = p^2
    assert abs(both - p * p) < 5 * (p * p / masks[:, 1:].numel()) ** 0.5
    dropout = SparseDropout(p).train()
    x = torch.randn(64, 300, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / (1 - p))
    assert torch.equal(dropout.eval()(x), x)
    torch.manual_seed(3)
    first = bernoulli_mask(torch.Size([7, 9]), 0.2)
    torch.manual_seed(3)
    assert torch.equal(first, bernoulli_mask(torch.Size([7, 9]), 0.2)) and first.shape == (7, 9)
