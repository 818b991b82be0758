"""MLRAdamW under DistributedDataParallel, 2 CPU ranks (gloo): equal to one process on the global
batch. DDP writes the all-reduced gradients into ``param.grad`` (our flat-buffer views) or, with
``gradient_as_bucket_view``, points ``param.grad`` at its own buckets; both must work unchanged."""

from __future__ import annotations

import random

import torch
from mlr.tuning.distributed import DistributedContext, wrap_model

from tests.dist_cases import Net, global_batches, run_ranks, train
from tests.optim_cases import assert_same_params, build_pair, random_groups


def _ddp_equals_one_process(ctx: DistributedContext) -> None:
    groups = random_groups(Net(0).model, random.Random(3))
    batches = global_batches(steps=6, seed=4)
    wrappers = [
        lambda net: wrap_model(net, "ddp"),  # gradient_as_bucket_view=False, DDP's default
        lambda net: torch.nn.parallel.DistributedDataParallel(net, gradient_as_bucket_view=True),
    ]
    for wrap in wrappers:
        net, single = Net(5), Net(5)
        ddp = wrap(net)
        ours, ref = build_pair(groups, net.model, single.model, "reference")
        train([(ddp, ours)], batches, ctx, model_zero_grad_at=(2,))
        train([(single, ref)], batches)
        assert_same_params(net.model, single.model)


def test_ddp_two_ranks_equal_one_rank_with_the_global_batch():
    run_ranks(_ddp_equals_one_process, 2)
