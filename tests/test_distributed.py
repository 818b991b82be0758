"""``mlr.tuning.distributed`` in one process (no torchrun): the context, the collectives' one-process
answers and the DCP checkpoint round trip of a model and MLRAdamW (``mlr.tuning.checkpoint``). The
multi-rank paths are in test_ddp / test_fsdp2."""

from __future__ import annotations

import pytest
import torch
from mlr.errors import MlrInputError
from mlr.tuning.distributed import (
    DistributedContext,
    all_reduce_sum,
    full_state_dict,
    init_distributed,
    rank_share,
    wrap_model,
)

from mlr_kernels import MLRAdamW
from tests.dist_cases import Net, global_batches, resume_training, save_training, train


def test_without_torchrun_it_is_one_process_and_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(device_type="cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()
    assert all_reduce_sum(3.0, ctx) == 3.0


def test_each_rank_takes_a_contiguous_equal_share_of_the_batch():
    shares = [rank_share(list(range(8)), DistributedContext(r, r, 2, torch.device("cpu"))) for r in (0, 1)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(MlrInputError, match="does not split over 3 ranks"):
        rank_share(list(range(8)), DistributedContext(0, 0, 3, torch.device("cpu")))


def test_unknown_strategy_is_an_input_error():
    with pytest.raises(MlrInputError, match="unknown distributed strategy"):
        wrap_model(Net(0), "zero3")


def test_checkpoint_round_trip_continues_identically(tmp_path):
    net = Net(1)
    opt = MLRAdamW(net.parameters(), lr=1e-2, backend="reference")
    opt.set_lr_mult({net.model["mid"].weight: 0.1})
    train([(net, opt)], global_batches(3, seed=2))
    checkpoint = save_training(tmp_path, net, opt)
    later = global_batches(3, seed=3)
    train([(net, opt)], later)

    restored = Net(9)
    restored_opt = MLRAdamW(restored.parameters(), lr=1e-2, backend="reference")
    restored_opt.set_lr_mult({restored.model["mid"].weight: 0.5})  # built as saved: the value loads
    resume_training(checkpoint, restored, restored_opt)
    assert restored_opt.lr_mult_of(restored.model["mid"].weight) == 0.1
    train([(restored, restored_opt)], later)
    for name, tensor in full_state_dict(net).items():
        assert torch.equal(tensor, full_state_dict(restored)[name]), name
