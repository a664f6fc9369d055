"""Training recipes: YAML files that map 1:1 onto dataclasses, with ``key=value`` overrides.

``load_recipe("my_recipe.yaml", ["train.max_steps=20", "lora.r=16"])`` reads
the YAML, applies the overrides (values parsed as YAML, so lists and numbers
work: ``data.train=[a.json,b.json]``), and builds a :class:`Recipe` (with
:mod:`puyu.config_files`).  An unknown key raises
:class:`~puyu.errors.ConfigError` naming it and listing the valid keys of its
section; a value of the wrong type names the key too.  A recipe name may also
be given bare (``lora_sft``): it is looked up in the recipes shipped with the
package, in :data:`RECIPES_DIR` (``puyu/train/recipes/``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puyu.config_files import apply_override, build, read_yaml
from puyu.data.dataset import DataConfig
from puyu.errors import ConfigError
from puyu.hardware import PRECISIONS
from puyu.model.lora import LoraConfig

METHODS = ("lora", "qlora", "full")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
RECIPES_DIR = Path(__file__).with_name("recipes")


@dataclass
class OptimConfig:
    """The ``optim`` section: AdamW and the learning-rate schedule.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay (matrices only, never norms or biases).
        beta1: AdamW first-moment decay.
        beta2: AdamW second-moment decay.
        eps: AdamW epsilon.
        schedule: after warmup: cosine, linear, constant, or wsd (warmup-stable-decay: constant, then a linear decay
            over the last decay_ratio of the steps, as MiniCPM; a stable run can be extended and decayed later).
        warmup_steps: steps of linear warmup from 0 (overrides warmup_ratio when > 0).
        warmup_ratio: share of the total steps used for warmup.
        min_lr_ratio: the schedule ends at lr * min_lr_ratio.
        decay_ratio: wsd only: share of the steps spent decaying.
        max_grad_norm: clip the global gradient norm to this (0 = no clipping).
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    decay_ratio: float = 0.2
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule {self.schedule!r} is unknown; use {', '.join(SCHEDULES)}")
        if not 0 < self.decay_ratio <= 1:
            raise ConfigError(f"optim.decay_ratio must be in (0, 1], got {self.decay_ratio}")


@dataclass
class LoopConfig:
    """The ``train`` section: steps, batches, precision, checkpoints.

    Attributes:
        epochs: passes over the data (ignored when max_steps > 0).
        max_steps: optimizer steps to run (0 = epochs decide).
        batch_size: rows per micro-batch on each process.
        grad_accum: micro-batches per optimizer step.
        precision: auto (bf16 on CUDA with bf16 and on CPUs with AVX512-BF16 or AMX, else fp32; see puyu.hardware), fp32, or bf16
            (bf16 autocast; frozen base weights stored in bf16; emulated, so slow, on CPUs without native bf16).
        grad_checkpointing: recompute each layer in backward to save memory (the result is the same, each layer's
            forward runs twice): true, false, or auto (off when one micro-batch's saved activations fit in the
            memory available, measured at start; see puyu.train.memory).
        compile: torch.compile the decoder layers (one graph serves them all): fused norms, activations, RoPE
            and dropout. The first steps pay the compile (under a minute for the built-in model on 2 cores;
            Inductor keeps it on disk for the next run), later steps run faster; on the CPU it needs a C++ compiler.
        save_every: write a resumable checkpoint every N steps (0 = only at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        strategy: with several processes: ddp, or fsdp (shards parameters; for large models).
        device: auto, cpu, cuda or cuda:N.
    """

    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    precision: str = "auto"
    grad_checkpointing: bool | str = "auto"
    compile: bool = False
    save_every: int = 50
    keep_checkpoints: int = 2
    strategy: str = "ddp"
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision {self.precision!r} is unknown; use {', '.join(PRECISIONS)}")
        if self.grad_checkpointing not in (True, False, "auto"):
            raise ConfigError(f"train.grad_checkpointing {self.grad_checkpointing!r} is unknown; use true, false or auto")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"train.strategy {self.strategy!r} is unknown; use ddp or fsdp")
        for name in ("batch_size", "grad_accum", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class MonitorConfig:
    """The ``monitor`` section: what a run reports while it trains.

    Attributes:
        log_every: write metrics every N steps.
        eval_every: validation loss every N steps (0 = only at the end; needs data.val or data.val_fraction).
        sample_every: generate replies to sample_prompts every N steps (0 = only at the end).
        sample_prompts: user messages to answer during training (greedy); when pre-training, text to continue.
        sample_max_new_tokens: length of those replies.
        tensorboard: also log to TensorBoard when it is installed.
    """

    log_every: int = 1
    eval_every: int = 0
    sample_every: int = 0
    sample_prompts: list[str] = field(default_factory=list)
    sample_max_new_tokens: int = 48
    tensorboard: bool = True


@dataclass
class PretrainConfig:
    """The ``pretrain`` section: train a new model from scratch on token shards (``puyu pretrain``).

    Attributes:
        shards: the shard folder from ``puyu tokenizer shards``; its tokenizer/ becomes the model's tokenizer.
        mixture: source -> weight, the share of training tokens per source (empty = every source, by its size).
        seq_len: tokens per training row (documents packed with boundary masks).
        val_rows: rows of the shards' val split for validation loss and perplexity (0 = none).
        size: named model size: pico, nano, micro, mini, smollm2-135m, smollm2-360m, internlm2-1.8b (see puyu.train.scratch).
        arch: weight layout of the model and the saved folder: llama, internlm2, qwen2 or mistral.
        model: model config fields over the size's, e.g. {num_layers: 6, hidden_size: 192}.
        init_std: std of the normal(0, std) init of every weight matrix (transformers' initializer_range).
        scaled_init: residual output projections (o_proj, down_proj) start at init_std / sqrt(2 * num_layers) (GPT-2,
            Megatron-LM, InternEvo); false = every matrix at init_std (transformers' Llama init).
    """

    shards: str = ""
    mixture: dict[str, float] = field(default_factory=dict)
    seq_len: int = 256
    val_rows: int = 32
    size: str = "nano"
    arch: str = "llama"
    model: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02
    scaled_init: bool = True

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("pretrain.shards is empty; give the folder written by: puyu tokenizer shards")
        if self.seq_len < 8:
            raise ConfigError(f"pretrain.seq_len must be at least 8, got {self.seq_len}")
        if self.init_std <= 0:
            raise ConfigError(f"pretrain.init_std must be positive, got {self.init_std}")


@dataclass
class VisionConfig:
    """The ``vision`` section: what trains besides the language model when the model is a vision-language one.

    Attributes:
        connector: train the projector from the vision tower to the language model (LLaVA's stage-2 fine-tuning does).
        tower: train the vision tower's weights too (off by default, as in LLaVA and XTuner's VLM recipes).
    """

    connector: bool = True
    tower: bool = False


@dataclass
class Recipe:
    """A training run: fine-tuning a model, or pre-training a new one when the ``pretrain`` section is set.

    Attributes:
        name: run name (the output folder is <runs>/train/<name>-<timestamp>).
        model: base model: registered name, Hugging Face folder or .gguf file (unused when pre-training).
        method: lora, qlora or full (pre-training: full).
        seed: seeds adapter init, dropout and the data order.
        output_dir: where the run writes (default: $PUYU_HOME/runs/train/<name>-<timestamp>).
        chat_template: override the model's template (chatml, internlm2, llama3 or Jinja source).
        data: the data section.
        lora: the lora section.
        optim: the optim section.
        train: the train section.
        monitor: the monitor section.
        vision: the vision section (vision-language models only).
        pretrain: the pretrain section (None: fine-tuning).
    """

    name: str = "run"
    model: str = "smollm2-135m-instruct"
    method: str = "lora"
    seed: int = 0
    output_dir: str | None = None
    chat_template: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    pretrain: PretrainConfig | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.pretrain is not None:
            if self.method != "full":
                raise ConfigError(f"pre-training trains every weight of a new model: set method: full (got {self.method})")
        elif not self.data.train:
            raise ConfigError("data.train is empty; give at least one data file")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of a shipped recipe (``lora_sft``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"no recipe file {name_or_path}; give a YAML path or one of: {names}")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe and apply ``key=value`` overrides (see the module docstring)."""
    path = find_recipe(name_or_path)
    values = read_yaml(path, "recipe")
    for override in overrides or []:
        apply_override(values, override)
    values.setdefault("name", path.stem)
    return build(Recipe, values, f"recipe {path.stem}")
