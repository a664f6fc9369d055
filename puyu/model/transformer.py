"""A Llama-family decoder in plain PyTorch: RMSNorm, RoPE, GQA attention, SwiGLU.

Parameter names follow the Hugging Face Llama layout
(``model.layers.N.self_attn.q_proj.weight`` ...), so Llama/Mistral/Qwen2/Qwen3
and InternLM v1/3 checkpoints load with an identity key map, PEFT adapter keys
line up, and only InternLM2 needs a real map (see :mod:`puyu.model.keymaps`).
Optional parts follow the config: biases (q/k/v, o, MLP separately) and Qwen3's
per-head q/k RMSNorm (``self_attn.q_norm``/``k_norm``, applied before RoPE).

Contract of :meth:`Transformer.forward`::

    out = model(tokens [B, T], positions [B, T] | None, cache=KVCache | None,
                mask=[B, 1, T, S] bool | None, logits_to_keep=0, output="logits")
    # output="logits" -> [B, T', vocab];  output="hidden" -> [B, T', hidden] (after the final norm)
    out = model(inputs_embeds=[B, T, hidden], ...)  # input vectors instead of token ids (image features
                                                    # scattered into the text embeddings, see puyu.model.vlm)

Without a cache the attention is causal over ``tokens``, or follows ``mask``
(e.g. block-diagonal masks for packed training samples; on a CPU, a mask that
is exactly causal within blocks is computed block by block, see
:class:`CausalBlocks`).  With a cache, the
cache computes attention over its stored keys/values (see :class:`KVCache`
for the protocol; the serving engine's paged cache implements it too).  ``logits_to_keep=n`` computes the LM head
on the last ``n`` positions only (prefill for generation needs one); a tensor
of indices computes it at those positions of ``T``.  ``output="hidden"`` returns
the final-normed hidden states at those positions instead, without the LM head
(training fuses the head with its loss; evaluation picks positions per row), and
:meth:`Transformer.head` turns them into logits: ``model.head(model(x, output="hidden"))``
equals ``model(x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from puyu.kernels import rms_norm
from puyu.kernels import rope as rope_kernel
from puyu.kernels import span_attention as span_kernel
from puyu.model.config import ModelConfig
from puyu.model.lora import LoRALinear, concat_lora, merge_lora
from puyu.model.rope import RotaryEmbedding, apply_rope


def trains_on_kernels(module: nn.Module, *tensors: torch.Tensor) -> bool:
    """Whether ``module`` takes puyu's training kernels for this call: training mode, gradients recorded for one of
    ``tensors``, not traced by ``torch.compile`` (Inductor fuses the torch form itself); the kernel's ``usable`` then
    says whether the device and dtypes fit."""
    return (module.training and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            and not torch.compiler.is_compiling())


class RMSNorm(nn.Module):
    """``y = w * x / sqrt(mean(x^2) + eps)``, the statistic in fp32 (as Llama does).

    In training mode, recording gradients on the CPU, it runs puyu's kernel (:mod:`puyu.kernels.rms_norm`: the same
    roundings, a float32 backward in one pass); elsewhere - inference, other devices, Inductor tracing - torch ops."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if trains_on_kernels(self, x, self.weight) and rms_norm.usable(x, self.weight):
            return rms_norm.rms_norm(x, self.weight, self.eps)  # training on the CPU: one pass each way
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class CausalBlocks:
    """A packed batch's block-diagonal causal mask as spans: ``rows[b]`` lists the ``(start, end)`` of each example
    (and of the padding after them) in row ``b``; a token attends causally within its span only.

    Why: SDPA given a dense ``[B, 1, T, T]`` mask computes every query against every key, while the examples of a
    1024-token row of agent-tuning chats need a quarter of that, causal within each; attention was a quarter of that
    recipe's step on 2 AVX2 cores.  Each span is one causal SDPA call.
    """

    def __init__(self, rows: list[list[tuple[int, int]]]):
        self.rows = rows
        self.longest = max(e - s for spans in rows for s, e in spans)
        self._spans: torch.Tensor | None = None

    @property
    def spans(self) -> torch.Tensor:
        """The spans as :func:`puyu.kernels.span_attention.spans_tensor` gives them (made once, for every layer)."""
        if self._spans is None:
            self._spans = span_kernel.spans_tensor(self.rows)
        return self._spans

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "CausalBlocks | None":
        """The spans of a bool ``[B, 1, T, T]`` mask, or None when it is not causal within blocks (a shared prefix)."""
        m = mask[:, 0]
        t = m.shape[-1]
        starts = torch.ones(m.shape[:2], dtype=torch.bool)
        starts[:, 1:] = ~m[:, 1:, :-1].diagonal(dim1=-2, dim2=-1).cpu()  # token i cannot see i - 1: a new block
        block = starts.cumsum(1)
        expected = (block[:, :, None] == block[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril()
        if not torch.equal(expected, m.cpu()):
            return None
        rows = []
        for row in starts:
            edges = row.nonzero().flatten().tolist() + [t]
            rows.append(list(zip(edges[:-1], edges[1:])))
        return cls(rows)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | CausalBlocks | None,
              causal: bool) -> torch.Tensor:
    """SDPA with grouped-query heads: ``q`` ``[B, H, T, D]``, ``k``/``v`` ``[B, KV, S, D]`` -> ``[B, H, T, D]``.

    ``mask`` is bool ``[B|1, 1, T, S]`` (True = attend), :class:`CausalBlocks`, or None (all keys, or causal when ``causal``).
    """
    b, h, t, d = q.shape
    kv = k.shape[1]
    if t == 1 and not causal and (mask is None or mask.shape[-2] == 1):
        # One query per sequence: the query heads of a key/value head can stand in for positions,
        # so the cached keys/values are not copied per group.
        out = F.scaled_dot_product_attention(q.reshape(b, kv, h // kv, d), k, v, attn_mask=mask)
        return out.reshape(b, h, 1, d)
    queries = mask.longest if isinstance(mask, CausalBlocks) else t
    back = _fp32_training_attention(q, k, v, queries)
    if back is None:
        return _attend(q, k, v, mask, causal)
    with torch.autocast(q.device.type, enabled=False):
        return _attend(q.float(), k.float(), v.float(), mask, causal).to(back)


SHORT_SPAN = 256  # at most this many queries: bf16 training attention computes in fp32 on the CPU


def _fp32_training_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, queries: int) -> torch.dtype | None:
    """bf16 (the dtype to return in) when a training step on the CPU would attend in bf16 over spans of at most
    :data:`SHORT_SPAN` ``queries``: then SDPA runs in fp32, once per call (before the grouped-query repeat).

    Why: PyTorch's CPU flash attention converts bf16 blocks on every pass, so for short spans its forward and
    backward cost up to twice the fp32 kernel's (measured on 2 Zen 4 cores, 9 heads of 64: 128 queries 2.9 ms
    bf16 against 1.5 ms through fp32, 256 about even, 1024 bf16 faster); packed training rows are mostly such spans.
    """
    if q.device.type != "cpu" or queries > SHORT_SPAN or not (q.requires_grad or k.requires_grad or v.requires_grad):
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    return dtype if dtype == torch.bfloat16 else None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | CausalBlocks | None,
            causal: bool) -> torch.Tensor:
    """:func:`attention` past its one-query shortcut: grouped-query heads repeated, then SDPA (block by block for
    :class:`CausalBlocks`)."""
    h, kv = q.shape[1], k.shape[1]
    if kv != h:
        # Explicit repeat: SDPA's enable_gqa takes the slow math path on CPU.
        k, v = k.repeat_interleave(h // kv, dim=1), v.repeat_interleave(h // kv, dim=1)
    if isinstance(mask, CausalBlocks):
        # split, not slicing: the backward of a split is one concatenation, where each slice's backward would write
        # its gradient into a zero tensor of the whole input and autograd would add those up.
        rows = []
        for qi, ki, vi, spans in zip(q.split(1), k.split(1), v.split(1), mask.rows):
            sizes = [e - s for s, e in spans]
            rows.append(torch.cat([F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
                                   for qs, ks, vs in zip(qi.split(sizes, 2), ki.split(sizes, 2), vi.split(sizes, 2))], dim=2))
        return torch.cat(rows)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)


class KVCache:
    """Static key/value buffers for a batch whose rows advance together.

    Buffers are ``[B, kv_heads, max_len, head_dim]`` per layer.  Ragged batches
    are left-padded; ``key_padding`` ``[B, max_len]`` marks real tokens (True)
    so padding is never attended to.  ``length`` counts the positions written.

    The cache protocol the model calls (the paged cache of the serving engine
    implements the same three methods): ``begin(new, device)`` before the
    layers, ``attend(layer, q, k, v)`` in each layer, ``end(new)`` after.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.max_len = max_len
        self.length = 0
        self.key_padding: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None

    def set_padding(self, real: torch.Tensor) -> None:
        """Mark real tokens of the rows to come: ``real`` ``[B, T]`` bool for the next write."""
        if self.key_padding is None:
            self.key_padding = torch.ones(real.shape[0], self.max_len, dtype=torch.bool, device=real.device)
        self.key_padding[:, self.length : self.length + real.shape[1]] = real

    def fill_prefix(self, prefix: "KVCache") -> None:
        """Copy a batch-1 cache's positions into every row, as if written here (a prompt prefix all rows share:
        computed once, see :func:`puyu.generation.generator.stream`); only into an empty cache."""
        if self.length:
            raise ValueError("fill_prefix needs an empty cache")
        for mine, theirs in zip(self.keys + self.values, prefix.keys + prefix.values):
            mine[:, :, : prefix.length] = theirs[:, :, : prefix.length]
        self.length = prefix.length

    def begin(self, new: int, device: torch.device) -> None:
        """Prepare the mask for the next ``new`` queries: causal over the cache, minus key padding."""
        total = self.length + new
        if total > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {total}")
        self._mask = None
        if new == 1 and self.key_padding is None:
            return
        q_pos = torch.arange(self.length, total, device=device)
        allowed = torch.arange(total, device=device)[None, :] <= q_pos[:, None]
        if self.key_padding is not None:
            allowed = allowed[None] & self.key_padding[:, None, :total]
            # A padding query sees no key; let it see all so SDPA gives no NaN (its output is unused).
            allowed = allowed | ~allowed.any(-1, keepdim=True)
        self._mask = allowed.reshape(-1, 1, new, total)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Append ``k``/``v`` ``[B, KV, T, D]`` and attend ``q`` ``[B, H, T, D]`` over everything cached."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return attention(q, self.keys[layer][:, :, :end], self.values[layer][:, :, :end], self._mask, causal=False)

    def end(self, new: int) -> None:
        self.length += new


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        h, kv, d = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=config.o_bias)
        self.qkv_proj: nn.Linear | None = None  # see Transformer.fuse_projections
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def forward(self, x, cos, sin, cache, layer: int, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        c = self.config
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split([c.num_heads * c.head_dim] + [c.num_kv_heads * c.head_dim] * 2, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k = q.view(b, t, c.num_heads, c.head_dim), k.view(b, t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        v = v.view(b, t, c.num_kv_heads, c.head_dim)
        if trains_on_kernels(self, q) and rope_kernel.usable(q, cos):  # puyu's kernels, heads still after the positions
            q, k = rope_kernel.rope(q, cos, sin), rope_kernel.rope(k, cos, sin)
            blocks = mask if isinstance(mask, CausalBlocks) else CausalBlocks([[(0, t)]] * b) if mask is None else None
            if cache is None and blocks is not None and span_kernel.usable(q, k, blocks.longest, len(blocks.spans)):
                out = span_kernel.span_attention(q, k, v, blocks.spans)
                return self.o_proj(out.reshape(b, t, c.num_heads * c.head_dim))
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        else:
            q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if cache is not None:
            out = cache.attend(layer, q, k, v)
        else:
            out = attention(q, k, v, mask, causal=t > 1)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, c.num_heads * c.head_dim))


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.gate_up_proj: nn.Linear | None = None  # see Transformer.fuse_projections

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache, layer, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def _concat_linears(*linears: nn.Module) -> nn.Module:
    """One layer whose outputs are those of ``linears`` side by side (a :class:`LoRALinear` if any of them is one)."""
    if any(isinstance(m, LoRALinear) for m in linears):
        return concat_lora(list(linears), _concat_linears(*(getattr(m, "base", m) for m in linears)))
    first = linears[0]
    fused = nn.Linear(first.in_features, sum(m.out_features for m in linears), bias=first.bias is not None,
                      device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in linears]))
        if first.bias is not None:
            fused.bias.copy_(torch.cat([m.bias for m in linears]))
    return fused


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Transformer(nn.Module):
    """The decoder with its LM head; see the module docstring for ``forward``."""

    image_input = None  # a vision-language model's language model carries its puyu.model.vlm.prompt.ImageInput here

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(config)
        self.gradient_checkpointing = False  # recompute each layer in backward (training memory)
        # A CPU mask that is causal within blocks runs block by block (CausalBlocks); compiled layers turn it off,
        # as they would compile again for every new set of example lengths.
        self.attend_in_blocks = True
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the LM head when the config says so (call after loading)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def fuse_projections(self) -> None:
        """For inference only: one matmul for q/k/v and one for gate/up in every layer (fewer, wider kernels;
        on the CPU a decode step at batch 1 is mostly kernel overhead).  The Hugging Face parameter names of
        those projections are gone afterwards, so fuse a model that will not be saved, trained or given adapters;
        adapters already on it are fused too (:func:`~puyu.model.lora.concat_lora`).
        """
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv_proj = _concat_linears(attn.q_proj, attn.k_proj, attn.v_proj)
            mlp.gate_up_proj = _concat_linears(mlp.gate_proj, mlp.up_proj)
            del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj

    def merge_adapters(self) -> None:
        """Fold LoRA adapters kept unmerged (for a quantized base) into the weights; see :func:`~puyu.model.lora.merge_lora`."""
        merge_lora(self)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty :class:`KVCache` in this model's dtype and device."""
        return KVCache(self.config, batch_size, max_len, self.dtype, self.device)

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output: str = "logits",
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if output not in ("logits", "hidden"):
            raise ValueError(f"output must be 'logits' or 'hidden', not {output!r}")
        if (tokens is None) == (inputs_embeds is None):
            raise ValueError("give either tokens or inputs_embeds")
        h = self.model.embed_tokens(tokens) if inputs_embeds is None else inputs_embeds
        b, t = h.shape[:2]
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + t, device=h.device).expand(b, t)
        if cache is not None:
            cache.begin(t, h.device)
        cos, sin = self.rope(positions, h.dtype)
        if mask is not None and cache is None and self.attend_in_blocks and h.device.type == "cpu" and t > 1:
            mask = CausalBlocks.from_mask(mask) or mask
        for i, layer in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, cos, sin, cache, i, mask, use_reentrant=False)
            else:
                h = layer(h, cos, sin, cache, i, mask)
        if cache is not None:
            cache.end(t)
        if isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]
        elif logits_to_keep:
            h = h[:, -logits_to_keep:]
        h = self.model.norm(h)
        return h if output == "hidden" else self.head(h)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head: final-normed hidden states ``[..., hidden]`` (``output="hidden"``) -> logits ``[..., vocab]``."""
        return self.lm_head(hidden)
