"""The one training loop for every method (LoRA, QLoRA, full, pre-training from scratch) and every process count.

``Trainer(recipe).fit()`` loads the base model (or, for a recipe with a
``pretrain`` section, builds and initialises a new one from a named size:
:mod:`puyu.train.scratch`), prepares it for the method, builds the data (SFT
files: :class:`~puyu.data.TrainData`; token shards:
:class:`~puyu.data.stream.PretrainData`), and runs AdamW with warmup +
cosine/linear/warmup-stable-decay schedules, gradient
accumulation, clipping, bf16 autocast (``precision: auto`` uses it only where
the hardware computes bf16 natively: :mod:`puyu.hardware`) and gradient
checkpointing.  Every
``save_every`` steps it writes a resumable checkpoint; ``resume=True``
continues from the newest one with weights, optimizer, scheduler, RNG and data
position restored (for the shard stream: its cursors, saved in the
checkpoint), so a killed run ends with the same weights as one that was never
interrupted (bit-exact on one CPU process; see tests/train, tests/pretrain).
The progress bar shows tokens/s and model FLOPs utilisation
(:mod:`puyu.train.throughput`); validation reports loss and perplexity.

Run folder: ``recipe.yaml`` (the resolved recipe), ``checkpoints/``,
``metrics.jsonl``, ``samples.jsonl``, ``loss.png``, ``summary.json`` and the
result: ``adapter/`` (PEFT format) for lora/qlora, ``model/`` (a Hugging Face
folder) for full and pre-training.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from puyu.data.dataset import TrainData
from puyu.data.shards import read_meta
from puyu.data.stream import PretrainData
from puyu.errors import ConfigError
from puyu.hardware import resolve_precision
from puyu.home import home_subdir
from puyu.model import load_model, save_pretrained
from puyu.model.adapters import write_adapter
from puyu.model.hf_io import build_model
from puyu.tokenizer import Tokenizer
from puyu.train import distributed as D
from puyu.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from puyu.train.config import Recipe
from puyu.train.memory import plan_checkpointing
from puyu.train.monitor import Monitor, generate_samples
from puyu.train.objective import LMObjective, compile_training, prepare_model
from puyu.train.scratch import model_config, new_model, parameter_count
from puyu.train.throughput import flops_per_token, peak_flops

log = logging.getLogger(__name__)
StepHook = Callable[[int, dict], None]


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    output: Path | None
    steps: int
    train_loss: float
    val_loss: float | None


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float, decay_ratio: float = 0.2) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps (linear warmup, then the schedule).

    ``wsd`` holds 1 until the last ``decay_ratio`` of the ``total`` steps, then decays linearly to ``min_ratio``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        start = max(warmup, total - round(decay_ratio * total))
        return 1.0 if step < start else min_ratio + (1 - min_ratio) * (1 - min(1.0, (step - start) / max(1, total - start)))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * shape


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean loss in nats per token (inf past float range)."""
    return math.exp(loss) if loss < 700 else float("inf")


def run_folder(recipe: Recipe, resume: bool, env: D.DistEnv) -> Path:
    """The run folder: the recipe's output_dir, else a new (or, resuming, the newest) runs/train/<name>-<time>."""
    if recipe.output_dir:
        return Path(recipe.output_dir).expanduser()
    root = home_subdir("runs") / "train"
    if resume:
        found = sorted((p for p in root.glob(f"{recipe.name}-*") if latest_checkpoint(p)), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"nothing to resume: no run of {recipe.name!r} with a checkpoint in {root}; "
                              "set output_dir or start without --resume")
        return found[-1]
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    if env.active:
        torch.distributed.broadcast_object_list(stamp, src=0)
    return root / f"{recipe.name}-{stamp[0]}"


class Trainer:
    """Runs one recipe.

    Args:
        recipe: the run's settings.
        resume: continue from the newest checkpoint in the run folder.
        hooks: called as ``hook(step, metrics)`` after every optimizer step (``step`` is 1-based).
    """

    def __init__(self, recipe: Recipe, resume: bool = False, hooks: list[StepHook] | None = None):
        self.recipe, self.resume, self.hooks = recipe, resume, list(hooks or [])
        self.env = D.init_distributed(recipe.train.device)
        self.precision = resolve_precision(recipe.train.precision, self.env.device)
        self.run_dir = run_folder(recipe, resume, self.env)
        self.seq_len = recipe.pretrain.seq_len if recipe.pretrain else recipe.data.max_length

    def _setup(self):
        r, env = self.recipe, self.env
        torch.manual_seed(r.seed)  # the same adapter (or from-scratch) init on every rank
        if r.pretrain:
            model, tokenizer, data = self._scratch()
        else:
            model, tokenizer = load_model(r.model, dtype=torch.float32, device=env.device)
            if r.chat_template:
                tokenizer.set_chat_template(r.chat_template)
            data = TrainData.build(r.data, tokenizer, r.seed, model.image_input)  # no global RNG draw: the init below is unchanged
        trainable = prepare_model(model, r.method, r.lora, self.precision.name, r.vision.connector, r.vision.tower)
        self.checkpointing = plan_checkpointing(r.train.grad_checkpointing, model, r.train.batch_size * self.seq_len,
                                                self.precision.autocast(env.device), env.device)
        model.gradient_checkpointing = self.checkpointing.on
        model.train()
        objective = LMObjective(model)
        if r.train.compile:
            compile_training(objective, env.device)
        module = D.wrap(objective, r.train.strategy, env)
        params = [p for p in module.parameters() if p.requires_grad]  # after wrapping: FSDP swaps in sharded parameters
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": r.optim.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        # fused: one vectorized kernel over all tensors instead of a Python loop over them, 3-4x faster on 2 CPU cores
        # for 14M parameters; FSDP's sharded (DTensor) parameters keep the loop.
        fused = not (env.active and r.train.strategy == "fsdp")
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=r.optim.lr, betas=(r.optim.beta1, r.optim.beta2),
                                      eps=r.optim.eps, fused=fused)
        log.info("%s: %d trainable tensors, %.2fM trainable parameters", r.method, len(trainable), sum(p.numel() for p in params) / 1e6)
        return model, tokenizer, data, module, optimizer

    def _scratch(self):
        """A new model of the pretrain section's size, its tokenizer (the shards') and the shard stream."""
        r, p = self.recipe, self.recipe.pretrain
        root = Path(p.shards).expanduser()
        read_meta(root)  # a clear error when it is not a shard folder
        tokenizer = Tokenizer.from_folder(root / "tokenizer")
        if r.chat_template:
            tokenizer.set_chat_template(r.chat_template)
        config = model_config(p.size, p.arch, tokenizer.vocab_size, p.seq_len, p.model)
        model = new_model(config, p.init_std, p.scaled_init, self.env.device)
        total, body = parameter_count(config)
        log.info("new %s model (%s): %.2fM parameters, %.2fM without the embedding; init normal(0, %g)%s", p.arch, p.size,
                 total / 1e6, body / 1e6, p.init_std, ", residual outputs scaled by 1/sqrt(2 layers)" if p.scaled_init else "")
        pad = tokenizer.token_id(tokenizer.pad_token) or tokenizer.eos_id or 0
        return model, tokenizer, PretrainData(root, p.seq_len, p.mixture, r.seed, p.val_rows, pad)

    def fit(self) -> RunResult:
        """Train to the end (or until killed); returns where the result is."""
        r, env = self.recipe, self.env
        model, tokenizer, data, module, optimizer = self._setup()
        global_batch = r.train.batch_size * r.train.grad_accum * env.world
        total = r.train.max_steps or r.train.epochs * data.steps_per_epoch(global_batch)
        warmup = r.optim.warmup_steps or int(r.optim.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total, warmup, r.optim.schedule, r.optim.min_lr_ratio, r.optim.decay_ratio))
        start = 0
        checkpoint = latest_checkpoint(self.run_dir) if self.resume else None
        if self.resume and checkpoint is None:
            log.warning("%s has no checkpoint yet (killed before the first save): starting from step 0", self.run_dir)
        if checkpoint is not None:
            start, extra = load_checkpoint(checkpoint, module, optimizer, scheduler, env, data.fingerprint)
            if isinstance(data, PretrainData):
                data.load_state_dict(extra["data_state"])
        if env.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(r.to_dict(), sort_keys=False, allow_unicode=True))
        D.barrier(env)
        dtype = torch.bfloat16 if self.precision.name == "bf16" else torch.float32
        monitor = Monitor(self.run_dir, total, start, env.main, r.monitor.tensorboard,
                          flops_per_token=flops_per_token(model.config, self.seq_len), peak_flops=peak_flops(env.device, dtype) * env.world)
        described = data.describe() if isinstance(data, PretrainData) else f"{len(data.rows)} training rows"
        monitor.note(f"precision {self.precision.name} ({self.precision.reason}); {described}, {global_batch} rows per step; "
                     f"gradient checkpointing {self.checkpointing.reason}"
                     + ("; decoder layers compiled (the first steps include the compile)" if r.train.compile else ""))
        params = [p for p in module.parameters() if p.requires_grad]
        loss = float("nan")
        for step in range(start, total):
            batches, target_tokens = data.micro_batches(step, r.train.batch_size, r.train.grad_accum, env.rank, env.world)
            summed, tokens, began = 0.0, 0, time.perf_counter()
            for i, batch in enumerate(batches):
                batch = batch.to(env.device)
                with D.no_sync(module, i < len(batches) - 1), self.precision.autocast(env.device):
                    part = module(batch.tokens, batch.targets, batch.positions, batch.mask, batch.pixels)
                (part * env.world / max(1, target_tokens)).backward()
                summed, tokens = summed + float(part.detach()), tokens + batch.real_tokens
                monitor.micro_batch(i + 1, len(batches), batch.real_tokens * env.world, time.perf_counter() - began)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, r.optim.max_grad_norm or float("inf"))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = D.all_reduce_sum(summed, env) / max(1, target_tokens)
            done = step + 1
            metrics = {"loss": loss, "lr": lr, "grad_norm": float(grad_norm)}
            seconds = time.perf_counter() - began
            monitor.step(done, loss, lr, float(grad_norm), int(D.all_reduce_sum(tokens, env)), seconds,
                         done % r.monitor.log_every == 0 or done == total)
            for hook in self.hooks:
                hook(done, metrics)
            if r.train.save_every and done % r.train.save_every == 0 and done < total:
                extra = {"data_fingerprint": data.fingerprint}
                if isinstance(data, PretrainData):
                    extra["data_state"] = data.state_dict()
                save_checkpoint(self.run_dir, done, module, optimizer, scheduler, env, extra, r.train.keep_checkpoints)
            self._periodic(done, total, module, model, tokenizer, data, monitor)
        val = self._validate(module, data, total, monitor)
        output = self._save_result(module, model, tokenizer)
        if env.main:
            plot = monitor.close()
            summary = {"steps": total, "precision": self.precision.name, "train_loss": loss, "val_loss": val,
                       "val_perplexity": perplexity(val) if val is not None else None,
                       "output": str(output) if output else None, "loss_plot": str(plot) if plot else None}
            if isinstance(data, TrainData):
                summary.update(truncated_samples=len(data.report.truncated), dropped_samples=len(data.report.dropped))
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        D.barrier(env)
        return RunResult(self.run_dir, output, total, loss, val)

    def _periodic(self, done: int, total: int, module, model, tokenizer, data: TrainData | PretrainData, monitor: Monitor) -> None:
        m = self.recipe.monitor
        if m.eval_every and done % m.eval_every == 0 and done < total:
            self._validate(module, data, done, monitor)
        last = done == total
        if m.sample_prompts and ((m.sample_every and done % m.sample_every == 0) or last):
            if self.recipe.train.strategy == "fsdp" and self.env.active:
                log.warning("sample generations are skipped under FSDP (the weights are sharded)")
            elif self.env.main:
                with self.precision.autocast(self.env.device):
                    replies = generate_samples(model, tokenizer, m.sample_prompts, m.sample_max_new_tokens, chat=not self.recipe.pretrain)
                monitor.samples(done, replies)
            D.barrier(self.env)

    @torch.no_grad()
    def _validate(self, module, data: TrainData | PretrainData, step: int, monitor: Monitor) -> float | None:
        """Mean validation loss per target token over all validation rows (all ranks share the work); logs its perplexity too."""
        if not data.val_rows:
            return None
        env = self.env
        module.eval()
        summed, count = 0.0, 0
        batches = data.val_batches(self.recipe.train.batch_size)
        mine = batches[env.rank :: env.world]
        for i in range(-(-len(batches) // env.world)):
            # Every rank runs as many forwards (under FSDP each is collective: a rank that stopped early would leave the
            # others waiting in an all-gather); a rank with no batch left repeats one and does not count it.
            batch = (mine[i] if i < len(mine) else batches[0]).to(env.device)
            with self.precision.autocast(env.device):
                loss = float(module(batch.tokens, batch.targets, batch.positions, batch.mask, batch.pixels))
            if i < len(mine):
                summed, count = summed + loss, count + batch.trained_tokens
        module.train()
        val = D.all_reduce_sum(summed, env) / max(1, D.all_reduce_sum(count, env))
        monitor.write({"step": step, "val_loss": val, "val_ppl": perplexity(val)})
        return val

    def _save_result(self, module, model, tokenizer) -> Path | None:
        """Write adapter/ (lora, qlora) or model/ (full) from the gathered trainable weights."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        r = self.recipe
        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        if not self.env.main:
            return None
        state = {k.removeprefix("model."): v for k, v in state.items()}
        if r.method == "full":
            full = build_model(model.config, state, torch.float32, "cpu")
            return save_pretrained(full, tokenizer, self.run_dir / "model")
        pairs = {k.removesuffix(".lora_A.weight"): (v, state[k.replace("lora_A", "lora_B")])
                 for k, v in state.items() if k.endswith(".lora_A.weight")}
        whole = {k: v for k, v in state.items() if ".lora_" not in k}  # a VLM's trained connector (and tower)
        return write_adapter(pairs, self.run_dir / "adapter", r.lora.r, r.lora.alpha, r.model, r.lora.dropout, whole)
