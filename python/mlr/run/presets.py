"""What ``mlr run`` does by default with each kind of model, in full and with ``--quick``.

- **The embedded default** (no ``--model``): a 0.87 M-parameter Llama with no training of its
  own, so its alignment is long (800 steps) and its learning rate high (1e-3).
- **``smollm2-135m-instruct``**: a real pretrained chat model (134.5 M parameters, 30 layers).
  Measured on the project's 2-core CPU (issue 11): at lr 1e-3 the loss diverges within three
  steps. An alignment of 360 steps at lr 1e-4 (two passes, with alarming-but-safe requests, so
  that it refuses harm and not words; issue 20) withstands 40 benign steps at lr 2e-5 or 1e-4
  (teacher-forced refusal score of the held-out harmful prompts 0.995 → 0.991, 0.961) and erodes
  at 3e-4 (→ 0.562), a rate that overshoots (held-out loss 0.71 against 0.49 at 1e-4) but the
  one here with erosion for a defense to prevent (docs/ml_lr.md, "How hard the sound alignment
  erodes"). So: full fine-tuning at 3e-4, 40 steps, batch 8, 96 tokens, three seeds;
  evaluation on the first 48 held-out harmful and benign prompts and 96 held-out instructions
  (decoding is the expensive part on a CPU); analysis with one perturbation seed (the score is
  continuous enough), noise α 0.5.
- **Any other ``--model``**: the embedded default's fine-tuning settings, no alignment (a model
  of the user's own is taken to be aligned already, as Llama-2-chat is), torch's choice of CPU
  threads.

On the CPU every process runs one torch thread for the embedded default and SmolLM2, and ``--jobs``
(default: one per core) fine-tunings run side by side: on the shared 2-core machine, under load,
SmolLM2's forward and backward ran at 16.5-18.5 tokens/s on one thread against 4.8-6.0 on two.

``--quick`` is a smoke test of every stage; its numbers mean nothing. For SmolLM2 it also fixes the
probe layer at 28 % of the depth (8 of 30, so the map replays few layers), fits the probe on 32 +
32 prompts of the embedded training split, trains one seed for 2 steps and evaluates 8 + 8 prompts
with 8 new tokens, to stay within 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlr.tuning.align import QUICK_ALIGNMENT, AlignSettings

SMOLLM2 = "smollm2-135m-instruct"


@dataclass(frozen=True)
class RunDefaults:
    """Settings of ``mlr run`` that depend on the model; a ``RunConfig`` field left ``None`` takes
    the value here (``--quick`` takes all of them)."""

    seeds: int
    steps: int
    lr: float
    batch_size: int
    max_length: int
    alpha: float
    analysis_seeds: int
    max_new_tokens: int
    save_every: int
    eval_limit: int | None = None  # evaluate the first N harmful / benign prompts, 2N instructions
    probe_prompts: int | None = None  # fit the probe on N + N prompts of the embedded train split
    probe_depth: float | None = None  # the probe layer as a fraction of the depth (None: the best)
    alignment: AlignSettings | None = None  # align the model first (None: it is aligned already)
    threads: int | None = 1  # torch's CPU threads per process (None: torch's choice)


EMBEDDED = RunDefaults(seeds=5, steps=200, lr=1e-3, batch_size=16, max_length=512, alpha=2.0,
                       analysis_seeds=3, max_new_tokens=32, save_every=100,
                       alignment=AlignSettings())
EMBEDDED_QUICK = replace(EMBEDDED, seeds=2, steps=6, batch_size=8, analysis_seeds=1,
                         eval_limit=12, max_new_tokens=8, save_every=3, alignment=QUICK_ALIGNMENT)
SMOLLM2_FULL = RunDefaults(seeds=3, steps=40, lr=3e-4, batch_size=8, max_length=96, alpha=0.5,
                           analysis_seeds=1, max_new_tokens=32, save_every=20, eval_limit=48,
                           # Two passes over the alignment data, its alarming-but-safe requests
                           # with helpful answers included: refuses 48/48 held-out harmful
                           # requests, 0/48 twins, 10/48 alarming-but-safe (docs/ml_lr.md).
                           alignment=AlignSettings(steps=360, lr=1e-4, batch_size=8,
                                                   max_length=96, alarming=True))
SMOLLM2_QUICK = replace(SMOLLM2_FULL, seeds=1, steps=2, batch_size=4, max_length=64,
                        max_new_tokens=8, save_every=0, eval_limit=8, probe_prompts=32,
                        probe_depth=0.28,
                        alignment=AlignSettings(steps=4, lr=2e-5, batch_size=4, max_length=64))

# Fields of RunDefaults that are also RunConfig options (the rest only come from these tables).
OPTION_FIELDS = ("seeds", "steps", "lr", "batch_size", "max_length", "alpha", "analysis_seeds",
                 "max_new_tokens", "save_every")


def run_defaults(model: str | None, quick: bool) -> RunDefaults:
    """The table for ``model`` as ``--model`` names it (None: the embedded default)."""
    if model is None:
        return EMBEDDED_QUICK if quick else EMBEDDED
    if model == SMOLLM2:
        return SMOLLM2_QUICK if quick else SMOLLM2_FULL
    return replace(EMBEDDED_QUICK if quick else EMBEDDED, alignment=None, threads=None)


def default_note(name: str) -> str:
    """The help text's default of the option ``name``: the embedded default's value, and the
    preset's where it differs."""
    embedded, smol = getattr(EMBEDDED, name), getattr(SMOLLM2_FULL, name)
    return str(embedded) if embedded == smol else f"{embedded}; {smol} with {SMOLLM2}"


