"""MLRAdamW under FSDP2 (``fully_shard``), 2 CPU ranks (gloo): each rank steps its local shards
and matches torch AdamW under FSDP2, clipping included, and with its state moved away and back
between steps; its DTensor state goes through ``torch.distributed.checkpoint`` and training
resumes identically. The per-step check reads each rank's local shards, in C++ as in Python."""

from __future__ import annotations

import os
import random

import pytest
import torch
from mlr.tuning.distributed import DistributedContext, wrap_model
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from mlr_kernels import MLRAdamW, host_reads
from mlr_kernels.dtensor import local_tensors
from mlr_kernels.host_reads import HOST_READS_ENV, KeptReads, ParamReads, read_params, reads_of
from tests.dist_cases import Net, global_batches, rank_slice, resume_training, run_ranks, save_training, train
from tests.optim_cases import build_pair, move_state, random_groups
from tests.test_host_reads import assert_same_reads


def _sharded_net(seed: int) -> Net:
    """A Net sharded by FSDP2; sizes 19, 33 and 5 do not split evenly over 2 ranks (padding)."""
    net = Net(seed)
    return wrap_model(net, "fsdp2", units=[net.model["inp"], net.model["mid"]])


def _full_params(net: Net) -> dict[str, torch.Tensor]:
    return {name: p.full_tensor() for name, p in net.named_parameters()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def _fsdp2_matches_torch_and_resumes(ctx: DistributedContext, checkpoints: str) -> None:
    groups = random_groups(Net(0).model, random.Random(6), base_lr=3e-2)
    net, torch_net = _sharded_net(7), _sharded_net(7)
    ours, ref = build_pair(groups, net.model, torch_net.model, "reference")
    param = net.model["mid"].weight
    assert isinstance(param, DTensor) and param.to_local().shape[0] == (17 if ctx.rank == 0 else 16)
    train([(net, ours), (torch_net, ref)], global_batches(6, seed=8), ctx, max_norm=0.05,
          model_zero_grad_at=(3,))
    _assert_same(_full_params(net), _full_params(torch_net), rtol=1e-5, atol=1e-6)
    assert all(isinstance(ours.state[param][key], DTensor) for key in ("exp_avg", "exp_avg_sq"))
    for opt in (ours, ref, ours, ref):  # the state moved off the device and back, as verl does
        move_state(opt, "replace")
    train([(net, ours), (torch_net, ref)], global_batches(2, seed=10), ctx)
    _assert_same(_full_params(net), _full_params(torch_net), rtol=1e-5, atol=1e-6)
    assert ours.state[param]["step"].item() == ref.state[torch_net.model["mid"].weight]["step"].item() == 8

    checkpoint = save_training(checkpoints, net, ours)
    later = global_batches(4, seed=9)
    train([(net, ours)], later, ctx)
    restored = _sharded_net(99)
    opt, _ = build_pair(groups, restored.model, Net(0).model, "reference")
    resume_training(checkpoint, restored, opt)
    train([(restored, opt)], later, ctx)
    _assert_same(_full_params(net), _full_params(restored), rtol=0, atol=0)


def test_fsdp2_matches_torch_adamw_and_resumes_from_a_dcp_checkpoint(tmp_path):
    run_ranks(_fsdp2_matches_torch_and_resumes, 2, str(tmp_path / "checkpoints"))


def _fsdp2_bfloat16_state_resumes(ctx: DistributedContext, checkpoints: str) -> None:
    """bfloat16 moments under FSDP2: each rank keeps its shards' moments in bfloat16 (DTensors),
    they go through ``torch.distributed.checkpoint``, and a resumed run draws the same random
    bits (same seed, the step counts restored), so it ends bit for bit as the uninterrupted one."""
    def build(seed: int) -> tuple[Net, MLRAdamW]:
        net = _sharded_net(seed)
        return net, MLRAdamW(net.parameters(), lr=3e-2, state_dtype=torch.bfloat16, seed=5,
                             backend="reference")

    net, opt = build(11)
    train([(net, opt)], global_batches(3, seed=12), ctx)
    param = net.model["mid"].weight
    assert opt.state[param]["exp_avg"].dtype == torch.bfloat16
    assert isinstance(opt.state[param]["exp_avg"], DTensor)
    checkpoint = save_training(checkpoints, net, opt)
    later = global_batches(3, seed=13)
    train([(net, opt)], later, ctx)
    restored, restored_opt = build(99)
    resume_training(checkpoint, restored, restored_opt)
    train([(restored, restored_opt)], later, ctx)
    _assert_same(_full_params(net), _full_params(restored), rtol=0, atol=0)


def test_fsdp2_with_bfloat16_state_resumes_bit_for_bit(tmp_path):
    run_ranks(_fsdp2_bfloat16_state_resumes, 2, str(tmp_path / "checkpoints"))


def _local_reads_in_python(params: list[DTensor]) -> ParamReads:
    return reads_of(local_tensors(params), [None if p.grad is None else p.grad._local_tensor for p in params])


def _cpp_reads_of_local_shards(ctx: DistributedContext) -> None:
    """The C++ reads of DTensor parameters are the Python reads of their local shards (a gradient
    None too), leave to those what they do not read, and tell in the steady state whether a
    gradient or a local shard moved."""
    net = _sharded_net(3)
    net(torch.randn(4, 7)).sum().backward()
    params = list(net.parameters())
    params[1].grad = None

    def read(params, shard_type):
        return host_reads._host.read(params, host_reads._PLAIN_TYPES, None, None, shard_type)

    reads = ParamReads(*read(params, DTensor))
    assert_same_reads(reads, _local_reads_in_python(params))
    assert all(type(g) is torch.Tensor for g in reads.grads if g is not None)
    # What the C++ reads do not read themselves is left to the Python reads.
    assert read(params + [torch.nn.Parameter(torch.ones(2))], DTensor) is None
    assert read(params, None) is None  # DTensors are not read as plain tensors
    kept = KeptReads()
    read_params(params, kept, sharded=True)
    kept.keep()
    assert read_params(params, kept, sharded=True) is None  # nothing moved
    params[0].grad._local_tensor.mul_(2)  # in place
    assert read_params(params, kept, sharded=True) is None
    old = [p.grad for p in params]  # kept alive: the new gradients get other addresses
    net.zero_grad()
    net(torch.randn(4, 7)).sum().backward()  # new gradients, FSDP2's: the parameters' lists hold
    reads = read_params(params, kept, sharded=True)
    assert reads.data_ptrs is None and reads.grad_ptrs == _local_reads_in_python(params).grad_ptrs
    kept.keep()
    assert read_params(params, kept, sharded=True) is None
    del old
    params[2]._local_tensor = params[2]._local_tensor.clone()  # a new local shard
    reads = read_params(params, kept, sharded=True)
    assert kept.fresh and reads.data_ptrs is not None  # read in C++, the parameters' lists made
    assert_same_reads(reads, _local_reads_in_python(params))
    # A gradient with an equal spec but not its parameter's (FSDP2 gives the parameter's): the
    # placements are compared in Python.
    params[0].grad = params[0].grad.detach().clone()
    assert read(params, DTensor) is None
    assert_same_reads(read_params(params, kept, sharded=True), _local_reads_in_python(params))


def test_cpp_reads_read_the_local_shards(monkeypatch):
    if "c++" not in host_reads.HOST_READ_PATHS:
        pytest.skip("mlr_kernels._host is not built for this torch")
    monkeypatch.setenv(HOST_READS_ENV, "c++")  # the spawned ranks inherit it
    run_ranks(_cpp_reads_of_local_shards, 2)


def _with_double_shard(p: DTensor) -> DTensor:
    grad = torch.zeros_like(p)
    grad._local_tensor = grad._local_tensor.double()
    return grad


def _gradients_sharded_otherwise_are_refused(ctx: DistributedContext) -> None:
    """A DTensor gradient that is not sharded like its parameter: torch checks a gradient against
    its parameter as DTensors, never their local shards, which the kernel steps one with the
    other. Each is refused, on the first step and in the steady state after good steps."""
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    full = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    replicated = distribute_tensor(full, mesh, [Replicate()])
    cases = {
        "sharded otherwise": lambda p: replicated,  # rank 1's shard would be stepped with rows 0-31
        "not a DTensor": lambda p: full,  # torch allows it; torch.optim.AdamW refuses the mix
        "local shard is": _with_double_shard,  # the shard replaced after torch's checks
    }
    for path in host_reads.HOST_READ_PATHS:
        os.environ[HOST_READS_ENV] = path
        for message, bad_grad in cases.items():
            for good_steps in (0, 2):
                p = torch.nn.Parameter(distribute_tensor(torch.zeros(64, 16), mesh, [Shard(0)]))
                opt = MLRAdamW([p], lr=0.1, backend="cpu")
                good = distribute_tensor(full, mesh, [Shard(0)])
                for _ in range(good_steps):
                    p.grad = good  # the same gradient: the second step is the steady state
                    opt.step()
                before = p.detach().full_tensor()
                p.grad = bad_grad(p)
                with pytest.raises(RuntimeError, match=message):
                    opt.step()
                assert torch.equal(p.detach().full_tensor(), before)


def test_gradients_sharded_otherwise_are_refused():
    run_ranks(_gradients_sharded_otherwise_are_refused, 2)


def _fsdp2_scheduled_steps(ctx: DistributedContext, path: str) -> None:
    """A scheduled lr, gradients re-allocated (zero_grad), accumulated (no zero_grad) and set to
    None by the model: the cpu kernel against torch AdamW, both under FSDP2."""
    answers = []  # the C++ reads' answers: True in the steady state, None where left to Python
    if path == "c++":
        real = host_reads._host.read
        host_reads._host.read = lambda *args: answers.append(real(*args)) or answers[-1]
    groups = random_groups(Net(0).model, random.Random(4), base_lr=3e-2)
    net, torch_net = _sharded_net(5), _sharded_net(5)
    ours, ref = build_pair(groups, net.model, torch_net.model, "cpu")
    batches = global_batches(8, seed=6)
    for step, batch in enumerate(batches):
        x = rank_slice(batch, ctx)
        for model, opt in ((net, ours), (torch_net, ref)):
            if step % 3 != 2:  # every third step accumulates onto the last step's gradients
                (model if step == 4 else opt).zero_grad()
            model(x).pow(2).mean().backward()
            for group in opt.param_groups:
                group["lr"] *= 0.9
            opt.step()
        _assert_same(_full_params(net), _full_params(torch_net), rtol=1e-5, atol=1e-6)
    if path == "c++":
        assert None not in answers and True in answers


@pytest.mark.parametrize("path", host_reads.HOST_READ_PATHS)
def test_fsdp2_scheduled_steps_match_torch_with_each_read_path(path, monkeypatch):
    monkeypatch.setenv(HOST_READS_ENV, path)  # the spawned ranks inherit it
    run_ranks(_fsdp2_scheduled_steps, 2, path)
