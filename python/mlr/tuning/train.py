"""The ML-LR fine-tuning recipe (``mlr train``), read top to bottom.

1. inputs: the (prompt, response) examples (with refusal examples mixed in for SafeInstr,
   ``mlr.tuning.peers``) and Mods_Robust, read before anything heavy;
2. model and tokenizer from a local directory (or the embedded default), LoRA adapters if asked;
3. data: the examples through the chat template, loss on the response tokens only;
4. the multipliers: ML-LR (Mods_Robust at the base LR, every other trainable module at base ×
   ratio; ratio 0 freezes them) or SWAT (Mods_Robust alone for a warm-up, then everything at the
   base LR; ``mlr.tuning.phases``), with a block of layers frozen for SPPFT
   (``mlr.tuning.peers``), no weight decay on norms and biases;
5. MLRAdamW, linear warm-up then cosine decay;
6. resume from the newest checkpoint when asked;
7. the loop: gradient accumulation, bf16 autocast on a GPU, gradient clipping, a progress bar
   with loss, LR and tokens/s, a JSONL metrics log, a checkpoint every ``save_every`` steps;
8. the final model (LoRA merged into it) saved atomically in ``out/model``.

``distributed="ddp"`` or ``"fsdp2"`` runs the same recipe on every rank under ``torchrun``
(:mod:`mlr.tuning.distributed`): each rank takes its share of every batch, rank 0 alone logs and writes,
and the result equals one process with the same global batch.

On the CPU a resumed run reaches the same final weights, bit for bit, as an uninterrupted one with
the same number of threads: the checkpoint holds the weights, optimizer, scheduler, RNG and data
order, and a step only depends on those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from mlr.data.instructions import InstructionExample, load_instructions
from mlr.errors import MlrInputError
from mlr.instruction_loss import encode_examples, make_batch, response_loss_sum, target_tokens
from mlr.io import reusable, write_json_atomic
from mlr.models import load_model, model_dir
from mlr.options import POSITIVE, Bounds, at_least, check_options, option, require
from mlr.output_dir import check_output_dir
from mlr.progress import progress_enabled
from mlr.shared_options import (
    BATCH_SIZE,
    DEVICE,
    DTYPE,
    IFT,
    MASTER_WEIGHTS,
    MODEL,
    OPTIMIZER_STATE,
    OPTIMIZER_STATES,
    OUT,
    SEED,
    require_master_weights_fit,
)
from mlr.tuning.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    save_pretrained_atomic,
)
from mlr.tuning.distributed import (
    STRATEGIES,
    all_reduce_sum,
    barrier,
    gathered_model,
    init_distributed,
    rank_share,
    single_process,
    unwrap,
    wrap_model,
)
from mlr.tuning.lora import add_lora, merged
from mlr.tuning.metrics_log import MetricsLog
from mlr.tuning.ml_lr import RATIO_BOUNDS, read_mods_robust
from mlr.tuning.peers import layer_parameter_names, mix_safety, parse_layer_block
from mlr.tuning.phases import (
    SCHEDULES,
    MultiplierPhases,
    default_swat_warmup,
    ml_lr_phases,
    swat_phases,
)
from mlr.tuning.sampler import EpochSampler
from mlr.tuning.schedule import warmup_cosine
from mlr_kernels import MLRAdamW


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of the recipe (each one an ``mlr train`` option). Raises ``MlrInputError``
    for an invalid value."""

    model: str | None = MODEL.field()
    ift: str | None = IFT.field(aliases=("--data",))
    mods_robust: str | None = option(None, "mods_robust.json from `mlr search`", metavar="FILE",
                                     none="no robust module: every module at --lr x --ratio")
    ratio: float = option(1.0, "LR multiplier of every module outside Mods_Robust (1: vanilla "
                          "fine-tuning, 0: freeze all but Mods_Robust)", bounds=RATIO_BOUNDS)
    schedule: str = option("ml-lr", "ml-lr: the rest at --lr x --ratio throughout; swat: "
                           "Mods_Robust alone for --swat-warmup-steps, then everything at --lr",
                           choices=SCHEDULES)
    swat_warmup_steps: int | None = option(None, "steps of the SWAT warm-up, which trains "
                                           "Mods_Robust alone", metavar="N",
                                           none="a quarter of --steps, rounded up",
                                           bounds=at_least(0))
    out: str = OUT.field("mlr_train")
    steps: int = option(200, "fine-tuning (optimizer) steps", bounds=at_least(1))
    lr: float = option(1e-3, "base learning rate", bounds=POSITIVE)
    batch_size: int = BATCH_SIZE.field()
    grad_accum: int = option(1, "micro-batches per optimizer step", metavar="K",
                             bounds=at_least(1))
    warmup_steps: int | None = option(None, "linear warm-up steps", metavar="N",
                                      none="10% of --steps")
    min_lr_ratio: float = option(0.1, "cosine floor as a fraction of --lr")
    weight_decay: float = option(0.0, "decoupled weight decay (never on norms and biases)")
    max_grad_norm: float = option(1.0, "clip the global gradient norm to this")
    max_length: int = option(512, "tokens per fine-tuning example (longer ones are cut)",
                             metavar="N", bounds=at_least(1))
    seed: int = SEED.field()
    lora_rank: int = option(0, "LoRA rank on q/k/v/o/gate/up/down (0: full fine-tuning)",
                            metavar="R", bounds=at_least(0))
    lora_alpha: float = option(16.0, "LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    freeze_layers: str | None = option(None, "keep these decoder layers' weights frozen, e.g. "
                                       "5-13 (SPPFT-style: the safety layers)", metavar="A-B",
                                       none="none")
    safety_mix: float = option(0.0, "share of the fine-tuning data (in mlr run, the safeinstr "
                               "arm's) made of refusal examples, SafeInstr-style: the embedded "
                               "alignment set's harmful requests and refusals",
                               metavar="SHARE", bounds=Bounds(0, 0.5))
    save_every: int = option(0, "checkpoint each fine-tuning run every N steps (0: never)",
                             metavar="N", bounds=at_least(0))
    keep_checkpoints: int = option(2, "newest checkpoints kept", metavar="N", bounds=at_least(1))
    resume: bool = option(False, "continue from the newest checkpoint in --out")
    dtype: str = DTYPE.field()
    optimizer_state: str = OPTIMIZER_STATE.field()
    master_weights: bool = MASTER_WEIGHTS.field()
    device: str = DEVICE.field()
    progress: bool = True  # a progress bar (the pipeline turns it off for parallel runs)
    distributed: str | None = option(
        None, "under torchrun: every rank trains its share of each global batch (DDP, or FSDP2 "
        "sharding); rank 0 logs and writes", choices=STRATEGIES, none="one process")

    def __post_init__(self) -> None:
        check_options(self)
        if self.schedule == "swat":
            require(self.ratio == 1.0, "--ratio is ML-LR's; --schedule swat freezes the rest "
                    "during its warm-up and then trains everything at --lr")
            require(self.distributed is None, "--schedule swat with --distributed is not "
                    "supported yet (the trainable set changes at the warm-up's end)")
        else:
            require(self.swat_warmup_steps is None,
                    "--swat-warmup-steps needs --schedule swat")
        require(self.swat_warmup_steps is None or self.swat_warmup_steps <= self.steps,
                f"--swat-warmup-steps must be at most --steps ({self.steps}), got "
                f"{self.swat_warmup_steps}")
        require(self.warmup_steps is None or 0 <= self.warmup_steps <= self.steps,
                f"--warmup-steps must be in 0..{self.steps}, got {self.warmup_steps}")
        require(not (self.distributed == "fsdp2" and self.lora_rank),
                "LoRA with --distributed fsdp2 is not supported yet; use ddp")
        require_master_weights_fit(self.master_weights, self.dtype)
        if self.freeze_layers is not None:
            parse_layer_block(self.freeze_layers)


# Settings that do not change the trajectory; a resumed run may differ from its first part in them.
_NOT_IN_FINGERPRINT = ("out", "save_every", "keep_checkpoints", "resume", "progress")


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float
    tokens: int
    seconds: float


def train(config: TrainConfig, examples: list[InstructionExample] | None = None) -> TrainResult:
    """Run the recipe; ``examples`` replaces ``config.ift`` (the pipeline passes its own).

    Raises:
        MlrInputError: bad input, all before the model loads: instruction data, Mods_Robust, an
            ``out`` that cannot be written or holds checkpoints without ``config.resume`` (or of
            the old format); then a model that cannot be loaded, nothing to train (``ratio`` 0
            and Mods_Robust empty), a checkpoint of a run with other settings or another number
            of ranks, and a non-finite gradient norm (the run stops before that step)."""
    out = Path(config.out)
    started = time.perf_counter()

    # 1. Inputs first, so that bad ones fail before a model is loaded.
    examples = training_examples(config, examples)
    robust = read_mods_robust(config.mods_robust) if config.mods_robust else []
    checkpoint = latest_checkpoint(out / "checkpoints")  # refuses an old-format one
    if checkpoint is not None and not config.resume:
        raise MlrInputError(f"{out} holds checkpoints of an earlier run; pass --resume to continue "
                            "it, or choose another --out")
    check_output_dir(out)

    # 2. Model and tokenizer (right padding for training), LoRA adapters. A cached model (the
    #    default, a GGUF conversion) is built before the process group exists, so that any rank
    #    may build it, on every node's own disk too.
    source = str(model_dir(config.model))
    ctx = (init_distributed(torch.device(config.device).type) if config.distributed
           else single_process(config.device))
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(source, config.dtype, str(ctx.device), padding_side="right")
    if config.lora_rank:
        model = add_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout)
    model.train()

    # 3. Data: chat-template tokens, response-only labels, a seeded resumable order.
    encoded = encode_examples(tokenizer, examples, config.max_length)
    sampler = EpochSampler(len(encoded), config.seed)

    # 4. The multipliers of each phase; multiplier 0 means frozen, so no gradient is even computed.
    phases = lr_phases(config, model, robust)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(phases.tables[0].get(name, 0.0) > 0.0)
    if config.distributed:  # after freezing: DDP and FSDP2 take the trainable set as it is now
        model = wrap_model(model, config.distributed)
    groups = phases.param_groups(unwrap(model), config.weight_decay)
    if not groups:
        raise MlrInputError("nothing to train: --ratio is 0 and Mods_Robust is empty")

    # 5. Optimizer and schedule.
    optimizer = MLRAdamW(groups, lr=config.lr, weight_decay=config.weight_decay,
                         state_dtype=OPTIMIZER_STATES[config.optimizer_state],
                         master_weights=config.master_weights, seed=config.seed)
    warmup = config.steps // 10 if config.warmup_steps is None else config.warmup_steps
    scheduler = warmup_cosine(optimizer, warmup, config.steps, config.min_lr_ratio)

    # 6. Resume (a finished run with the same fingerprint is not run again).
    fingerprint = _fingerprint(config, encoded)
    finished = _finished(config, out, fingerprint)
    if finished is not None:
        return finished
    step = 0
    if checkpoint is not None:
        # The trainable set of the phase the checkpoint was saved in: that of its last step.
        phases.enter(optimizer, max(read_checkpoint_meta(checkpoint)["step"] - 1, 0))
        step = load_checkpoint(checkpoint, model, optimizer, scheduler, sampler, fingerprint)
    log = MetricsLog(out / "metrics.jsonl")
    if ctx.is_main:
        log.rewind(step)

    # 7. The loop.
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda"
                else contextlib.nullcontext())
    pad_id = tokenizer.pad_token_id
    tokens_seen, last_loss = 0, float("nan")
    with tqdm(total=config.steps, initial=step, desc="train",
              disable=not (config.progress and ctx.is_main and progress_enabled())) as bar:
        while step < config.steps:
            if step in phases.starts:
                phases.enter(optimizer, step)
            tick = time.perf_counter()
            micro_batches = [make_batch(encoded, rank_share(sampler.next_batch(config.batch_size), ctx),
                                        pad_id, ctx.device) for _ in range(config.grad_accum)]
            # Ranks' gradients are averaged: scale by the world size to get the global token mean.
            targets = all_reduce_sum(sum(target_tokens(b) for b in micro_batches), ctx) / ctx.world_size
            loss_sum = 0.0
            for batch in micro_batches:
                with autocast:
                    loss = response_loss_sum(model, batch) / targets
                loss.backward()
                loss_sum += loss.item()
            grad_norm = optimizer.clip_grad_norm_(config.max_grad_norm)
            if not torch.isfinite(grad_norm):  # stop before the step writes NaN into every weight
                raise MlrInputError(
                    f"step {step + 1}: the gradient norm is {float(grad_norm)} (loss {loss_sum:.4g}); "
                    "training stopped before the bad step, earlier checkpoints are intact (lower --lr, "
                    "or check the data)")
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1

            loss_sum = all_reduce_sum(loss_sum, ctx) / ctx.world_size
            tokens = int(all_reduce_sum(sum(int(b.attention_mask.sum()) for b in micro_batches), ctx))
            tokens_seen += tokens
            last_loss = loss_sum
            seconds = time.perf_counter() - tick
            if ctx.is_main:
                log.append({"step": step, "loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm),
                            "tokens": tokens, "tokens_per_s": tokens / seconds})
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens / seconds:.0f}")
            bar.update()
            if config.save_every and step % config.save_every == 0:
                save_checkpoint(out / "checkpoints", step, model, optimizer, scheduler, sampler,
                                fingerprint, config.keep_checkpoints)

    # 8. The final model, LoRA merged in.
    whole = gathered_model(model, lambda: load_model(source, config.dtype, "cpu")[0], ctx)
    final_dir = out / "model"
    result = TrainResult(final_dir, step, last_loss, tokens_seen, time.perf_counter() - started)
    if ctx.is_main:
        save_pretrained_atomic(merged(whole), tokenizer, final_dir)
        write_json_atomic(out / "train.json", {
            "config": asdict(config), "fingerprint": fingerprint, "backends": optimizer.backends,
            "result": {**asdict(result), "model_dir": str(final_dir)}})
    if ctx.is_distributed:
        barrier()
    return result


def lr_phases(config: TrainConfig, model: torch.nn.Module, robust: list[str]) -> MultiplierPhases:
    """The multipliers of ``config.schedule`` over the run (``mlr.tuning.phases``), with
    ``config.freeze_layers`` frozen throughout."""
    if config.schedule == "swat":
        warmup = (default_swat_warmup(config.steps) if config.swat_warmup_steps is None
                  else config.swat_warmup_steps)
        phases = swat_phases(model, robust, warmup)
    else:
        phases = ml_lr_phases(model, robust, config.ratio)
    if config.freeze_layers is None:
        return phases
    return phases.without(layer_parameter_names(model, parse_layer_block(config.freeze_layers)))


def training_examples(config: TrainConfig,
                      examples: list[InstructionExample] | None = None) -> list[InstructionExample]:
    """``examples`` (None: ``config.ift``'s) with ``config.safety_mix``'s refusal examples."""
    examples = load_instructions(config.ift) if examples is None else examples
    return mix_safety(examples, config.safety_mix)


def expected_fingerprint(config: TrainConfig,
                         examples: list[InstructionExample] | None = None) -> dict:
    """The fingerprint that ``train(config, examples)`` records in train.json, computed from the
    tokenizer alone (no model loads): what tells whether a finished run in ``config.out`` is this
    one. Raises ``MlrInputError`` for bad data."""
    examples = training_examples(config, examples)
    tokenizer = AutoTokenizer.from_pretrained(model_dir(config.model), local_files_only=True)
    return _fingerprint(config, encode_examples(tokenizer, examples, config.max_length))


def _fingerprint(config: TrainConfig, encoded: list[tuple[list[int], list[int]]]) -> dict:
    """The settings and the exact data of the run, to refuse resuming a different run."""
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_FINGERPRINT}
    settings["data"] = settings.pop("ift")  # the key of checkpoints made before --data became --ift
    data = hashlib.sha256(json.dumps(encoded).encode()).hexdigest()
    return {**settings, "data_sha256": data}


def _finished(config: TrainConfig, out: Path, fingerprint: dict) -> TrainResult | None:
    """With ``resume``, the result of a run that already finished in ``out`` with this
    fingerprint (its model is saved), else None."""
    if not (config.resume and (out / "model").is_dir()):
        return None
    saved = reusable(out / "train.json", fingerprint, field="fingerprint")
    if saved is None:
        return None
    return TrainResult(**{**saved["result"], "model_dir": Path(saved["result"]["model_dir"])})
