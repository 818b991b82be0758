"""ML-LR fine-tuning: per-module learning-rate multipliers (``ml_lr``), LoRA, schedule, sampler,
checkpoints, distributed training, and the ``train`` recipe (its data and loss are
``mlr.data.instructions`` and ``mlr.instruction_loss``); ``align`` safety-aligns the embedded
default with the same recipe."""
