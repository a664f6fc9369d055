"""What a training run reports: progress bar, metrics file, TensorBoard, sample replies, loss curve.

Only the main process reports.  Files in the run folder:
``metrics.jsonl`` (one JSON object per logged step: ``step``, ``loss``, ``lr``,
``grad_norm``, ``tokens``, ``tokens_per_s``, ``mfu`` (model FLOPs utilisation,
when the FLOPs per token are known), and ``val_loss``/``val_ppl`` when evaluated),
``samples.jsonl`` (greedy replies to the recipe's prompts: XTuner's
EvaluateChatHook), ``loss.png`` (train and validation loss against steps) and
TensorBoard event files under ``tb/`` when ``tensorboard`` is installed.  On
resume, metric lines past the checkpoint's step are dropped so the curve is
continuous.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class Monitor:
    """Reports of one run (a no-op on non-main ranks).

    Args:
        run_dir: the run folder.
        total_steps: steps the run will take in all.
        start_step: the step it starts (or resumes) from.
        enabled: False on non-main ranks.
        tensorboard: write TensorBoard events when the package is installed.
        flops_per_token: training FLOPs per token (0 = unknown: no MFU shown).
        peak_flops: peak FLOP/s of all devices together (see :mod:`puyu.train.throughput`).
    """

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True, tensorboard: bool = True,
                 flops_per_token: float = 0.0, peak_flops: float = 0.0):
        self.run_dir, self.enabled, self.total_steps = run_dir, enabled, total_steps
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        self.bar = None
        self.writer = None
        self.window_seconds, self.window_tokens = 0.0, 0
        self.done_steps, self.partial_tokens = start_step, 0
        self.postfix: dict[str, str] = {}
        if not enabled:
            return
        if self.metrics_path.exists():
            kept = [json.loads(x) for x in self.metrics_path.read_text().splitlines() if x.strip()]
            self.history = [m for m in kept if m["step"] <= start_step]
        self.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in self.history))
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, disable=None)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1)
            except ImportError:
                log.info("tensorboard is not installed; metrics go to %s only", self.metrics_path)

    def note(self, text: str) -> None:
        """A line above the progress bar (the run's set-up: precision and why, data size)."""
        if self.enabled:
            self.bar.write(text)

    def micro_batch(self, index: int, count: int, tokens: int, seconds: float) -> None:
        """Micro-batch ``index`` of ``count`` in the current step is done: ``seconds`` since the step began.

        Moves the bar by a fraction of a step and shows tokens/s from the first micro-batch on, so a slow
        configuration is visible within seconds rather than after a whole optimizer step.
        """
        if not self.enabled:
            return
        self.partial_tokens += tokens
        elapsed = self.window_seconds + seconds
        rate = (self.window_tokens + self.partial_tokens) / elapsed if elapsed > 0 else 0.0
        if index < count:
            self.bar.n = self.done_steps + index / count
            self.postfix.update(micro=f"{index}/{count}", tok_s=f"{rate:.0f}")
            self.bar.set_postfix(self.postfix)

    def step(self, step: int, loss: float, lr: float, grad_norm: float, tokens: int, seconds: float, log_now: bool) -> None:
        """Record optimizer step ``step`` (1-based) that trained on ``tokens`` tokens in ``seconds`` (all processes)."""
        if not self.enabled:
            return
        self.window_tokens += tokens
        self.window_seconds += seconds
        self.done_steps, self.partial_tokens = step, 0
        rate = self.window_tokens / self.window_seconds if self.window_seconds > 0 else 0.0
        self.bar.n = step
        self.postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok_s": f"{rate:.0f}"}
        record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "tokens_per_s": round(rate, 1)}
        if self.flops_per_token and self.peak_flops:
            record["mfu"] = round(rate * self.flops_per_token / self.peak_flops, 4)
            self.postfix["mfu"] = f"{record['mfu']:.1%}"
        self.bar.set_postfix(self.postfix)
        if log_now:
            self.write(record)
            self.window_seconds, self.window_tokens = 0.0, 0

    def write(self, record: dict[str, Any]) -> None:
        """Append a metrics record (and send its numbers to TensorBoard)."""
        if not self.enabled:
            return
        self.history.append(record)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def samples(self, step: int, replies: list[tuple[str, str]]) -> None:
        """Record the replies ``[(prompt, reply)]`` generated at ``step``."""
        if not self.enabled:
            return
        with (self.run_dir / "samples.jsonl").open("a") as f:
            for prompt, reply in replies:
                f.write(json.dumps({"step": step, "prompt": prompt, "reply": reply}, ensure_ascii=False) + "\n")
                self.bar.write(f"[step {step}] {prompt!r} -> {reply!r}")

    def close(self) -> Path | None:
        """Close the bar and writer; draw ``loss.png``; returns its path."""
        if not self.enabled:
            return None
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        return plot_losses(self.history, self.run_dir / "loss.png")


def plot_losses(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Train (and validation) loss against step, as a PNG."""
    train = [(m["step"], m["loss"]) for m in history if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in history if "val_loss" in m]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for points, label in ((train, "train"), (val, "validation")):
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, chat: bool = True) -> list[tuple[str, str]]:
    """Greedy replies to ``prompts`` as user messages (``chat``), else continuations of them as plain text
    (a model in pre-training); the RNG state stays untouched, so training stays reproducible."""
    from puyu.generation import SamplingParams, generate

    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        ids = [tokenizer.render([{"role": "user", "content": p}], add_generation_prompt=True).ids if chat
               else tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        replies = [c.text for c in generate(model, tokenizer, ids, params)]
    model.train(was_training)
    return list(zip(prompts, replies))
