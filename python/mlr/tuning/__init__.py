"""ML-LR fine-tuning: per-module learning-rate multipliers (``ml_lr``), LoRA, the supervised data
and loss (``sft``), schedule, sampler, checkpoints, distributed training, and the ``train`` recipe;
``align`` safety-aligns the embedded default with the same recipe."""
