"""Glue between MLRAdamW with ML-LR multipliers and other people's trainers (Hugging Face Trainer).

Nothing here is imported by ``mlr`` or ``mlr_kernels`` themselves: each module imports its trainer.
"""
