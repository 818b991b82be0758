"""The optimizer's per-step reads of parameters and gradients (mlr_kernels/host_reads.py): the C++
reads give exactly what the Python reads give, and leave to them every tensor they do not read
themselves; which reads run is chosen and reported as documented."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mlr_kernels import MLRAdamW, host_reads
from mlr_kernels.host_reads import HOST_READS_ENV, KeptReads, ParamReads, read_params, reads_of

BUILT = "c++" in host_reads.HOST_READ_PATHS
needs_cpp = pytest.mark.skipif(not BUILT, reason="mlr_kernels._host is not built for this torch")


@pytest.fixture(autouse=True)
def _each_test_chooses_its_reads(monkeypatch):
    """The tests here choose the reads they make (auto unless they set them): the caller's
    ``MLR_HOST_READS`` (scripts/test.sh sets c++) does not choose for them."""
    monkeypatch.delenv(HOST_READS_ENV, raising=False)


def python_reads(params: list[torch.Tensor]) -> ParamReads:
    return reads_of(params, [p.grad for p in params])


def reads_on(path: str, monkeypatch, function: str) -> list:
    """Make the optimizer read on ``path``; return the list that records each answer of
    ``mlr_kernels._host.<function>`` on the C++ path (left empty on the Python path)."""
    monkeypatch.setenv(HOST_READS_ENV, path)
    answers = []
    if path == "c++":
        real = getattr(host_reads._host, function)
        monkeypatch.setattr(host_reads._host, function,
                            lambda *args: answers.append(real(*args)) or answers[-1])
    return answers


def cpp_reads(params: list[torch.Tensor]) -> ParamReads | None:
    reads = host_reads._host.read(params, host_reads._PLAIN_TYPES, None, None, None)
    return None if reads is None else ParamReads(*reads)


def assert_same_reads(a: ParamReads, b: ParamReads) -> None:
    assert a.data_ptrs == b.data_ptrs and a.live == b.live and a.grad_ptrs == b.grad_ptrs
    assert all(x is y for x, y in zip(a.grads, b.grads)) and len(a.grads) == len(b.grads)


def mixed_params() -> list[torch.nn.Parameter]:
    """Sizes (empty ones too), dtypes, gradients present and absent."""
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype))
              for shape, dtype in [((3,), torch.float32), ((0,), torch.float32), ((4, 5), torch.bfloat16),
                                   ((2, 3, 4), torch.float16), ((7,), torch.float32), ((1,), torch.float32)]]
    for p in params[::2]:
        p.grad = torch.randn_like(p)
    return params


@needs_cpp
def test_cpp_reads_are_the_python_reads():
    params = mixed_params()
    assert_same_reads(cpp_reads(params), python_reads(params))
    for p in params:  # every gradient present: another branch of the Python reads
        p.grad = torch.randn_like(p)
    assert_same_reads(cpp_reads(params), python_reads(params))
    assert cpp_reads([]) == ParamReads([], [], [], [], ([],))


@needs_cpp
def test_cpp_layouts_tell_apart_what_python_layouts_tell_apart():
    """Each path's layouts are equal exactly where the tensors' dtypes, shapes and strides are:
    the C++ hashes of the same layout agree and those of different ones (of one storage at one
    address, as user code makes them with ``p.data = ...``) differ, as Python's triples do."""
    base = torch.randn(24)
    layouts = [base.view(4, 6), base.view(6, 4), base.view(4, 6).t(), base.view(24), base.view(2, 3, 4),
               base.view(2, 3, 4).transpose(0, 2), base.view(2, 3, 4).permute(1, 0, 2), base.view(1, 24),
               base.view(24, 1), base.view(2, 12), base.view(12, 2).t(), base.view(torch.int32).view(4, 6)]
    params = layouts + [base.view(4, 6)]
    assert len({p.data_ptr() for p in params}) == 1
    (cpp,), python = cpp_reads(params).layouts, list(zip(*python_reads(params).layouts))
    for i in range(len(params)):
        for j in range(len(params)):
            assert (cpp[i] == cpp[j]) == (python[i] == python[j]), (layouts[i].shape, layouts[j].shape)
    assert cpp[0] == cpp[-1] and len(set(cpp)) == len(layouts)


@needs_cpp
def test_a_torch_error_in_the_cpp_reads_leaves_them_to_python():
    """A C++ exception from torch must not cross into the interpreter (it would abort it): the
    C++ reads answer None, and the Python reads raise torch's error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype
        nested = torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)])
    assert cpp_reads([nested]) is None  # its sizes() throws
    with pytest.raises(RuntimeError, match="NestedTensorImpl"):
        python_reads([nested])


@needs_cpp
def test_cpp_reads_give_the_gradient_autograd_made_before_python_touched_it():
    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    params = list(model.parameters())
    reads = cpp_reads(params)
    assert all(g is p.grad for g, p in zip(reads.grads, params))
    assert reads.grad_ptrs == [p.grad.data_ptr() for p in params]


@needs_cpp
@pytest.mark.parametrize("case", ["transposed", "channels_last", "sparse", "param_subclass", "grad_subclass"])
def test_what_cpp_does_not_read_is_left_to_python(case):
    """A gradient not dense in row-major order, or a tensor whose type may override .grad or
    data_ptr(): the C++ reads answer None and read_params gives the Python reads."""
    class Subclass(torch.Tensor):
        pass

    params = mixed_params()
    p = params[1] = torch.nn.Parameter(torch.randn(4, 3, 2, 2))
    if case == "transposed":
        p.grad = torch.randn(3, 4, 2, 2).transpose(0, 1)
    elif case == "channels_last":
        p.grad = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    elif case == "sparse":
        params[1] = p = torch.nn.Parameter(torch.randn(4, 3))
        p.grad = torch.randn(4, 3).to_sparse()
    elif case == "param_subclass":
        params[1] = p = torch.nn.Parameter(torch.randn(4, 3)).as_subclass(Subclass).requires_grad_()
        p.grad = torch.randn(4, 3)
    else:
        p.grad = torch.randn(4, 3, 2, 2).as_subclass(Subclass)
        assert type(p.grad) is Subclass
    assert cpp_reads(params) is None
    reads = read_params(params)
    if case == "sparse":
        assert reads.grad_ptrs is None and reads.live == python_reads(params).live
    else:
        assert_same_reads(reads, python_reads(params))
    if case in ("transposed", "channels_last"):
        assert reads.grad_ptrs is None  # the caller copies it into its parameter's layout first


@needs_cpp
def test_a_torch_function_mode_sends_the_reads_to_python(monkeypatch):
    calls = []
    monkeypatch.setattr(host_reads._host, "read", lambda *args: calls.append(args))
    params = mixed_params()
    with torch.device("cpu"):  # a TorchFunctionMode: it could change what a read returns
        assert_same_reads(read_params(params), python_reads(params))
    assert calls == []
    read_params(params)
    assert len(calls) == 1


def test_the_choice_of_reads_follows_the_environment(monkeypatch):
    monkeypatch.setenv(HOST_READS_ENV, "python")
    assert host_reads.host_reads() == "python"
    monkeypatch.setenv(HOST_READS_ENV, "fast")
    with pytest.raises(ValueError, match="MLR_HOST_READS='fast' is unknown; use auto, c\\+\\+ or python"):
        host_reads.host_reads()
    for default in ("auto", ""):  # empty as unset
        monkeypatch.setenv(HOST_READS_ENV, default)
        assert host_reads.host_reads() == host_reads.HOST_READ_PATHS[0]


@needs_cpp
def test_an_extension_built_for_another_torch_is_not_used(monkeypatch):
    monkeypatch.setattr(host_reads._host, "TORCH_VERSION", "1.0.0")
    host_reads._native_reason.cache_clear()
    host_reads._warn_built_for_another_torch.cache_clear()
    try:
        monkeypatch.setenv(HOST_READS_ENV, "python")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning where the Python reads were asked for
            assert host_reads.host_reads() == "python"
        monkeypatch.setenv(HOST_READS_ENV, "auto")
        with pytest.warns(UserWarning, match="built for torch 1.0.0 but torch .* is running"):
            assert host_reads.host_reads() == "python"
        monkeypatch.setenv(HOST_READS_ENV, "c++")
        with warnings.catch_warnings(), pytest.raises(RuntimeError, match="MLR_HOST_READS=c\\+\\+, but"):
            warnings.simplefilter("ignore")  # cached: the warning was given once above
            host_reads.host_reads()
    finally:
        monkeypatch.undo()
        host_reads._native_reason.cache_clear()
        host_reads._warn_built_for_another_torch.cache_clear()
    assert host_reads._native_reason() is None  # usable again


def test_c_plus_plus_reads_required_where_not_built(monkeypatch):
    monkeypatch.setattr(host_reads, "_host", None)
    host_reads._native_reason.cache_clear()
    try:
        monkeypatch.setenv(HOST_READS_ENV, "c++")
        with pytest.raises(RuntimeError, match="mlr_kernels._host cannot be imported"):
            host_reads.host_reads()
        monkeypatch.setenv(HOST_READS_ENV, "auto")
        assert host_reads.host_reads() == "python"
    finally:
        monkeypatch.undo()
        host_reads._native_reason.cache_clear()


@needs_cpp
def test_a_step_makes_its_reads_in_cpp_and_matches_the_python_reads(monkeypatch):
    """The optimizer uses the C++ reads when they can run, and steps to the same bits either way."""
    calls = []
    read = host_reads._host.read
    monkeypatch.setattr(host_reads._host, "read", lambda *args: calls.append(1) or read(*args))
    results = {}
    for path in ("c++", "python"):
        monkeypatch.setenv(HOST_READS_ENV, path)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        opt = MLRAdamW([dict(params=[p], lr_mult=0.5 + k) for k, p in enumerate(model.parameters())], lr=1e-2)
        for _ in range(3):
            model(torch.randn(5, 4)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        results[path] = [p.detach().clone() for p in model.parameters()]
        assert (len(calls) > 0) == (path == "c++")
        calls.clear()
    assert all(torch.equal(a, b) for a, b in zip(results["c++"], results["python"]))


GROUP_KEYS = ("weight_decay", "betas")
OPTIONAL = (("lr_mult", 1.0),)


def seen_of(groups: list[dict]) -> tuple[list, list]:
    """What the optimizer's Python reads keep of ``groups`` (see same_group_values)."""
    return ([(g["weight_decay"], g["betas"]) for g in groups], [g.get("lr_mult", 1.0) for g in groups])


@needs_cpp
def test_same_group_values_compares_with_what_python_read():
    groups = [dict(weight_decay=0.1, betas=(0.9, 0.999)),
              dict(weight_decay=0.0, betas=(0.8, 0.99), lr_mult=2.0)]
    seen = seen_of(groups)
    same = host_reads._host.same_group_values
    assert same(groups, GROUP_KEYS, OPTIONAL, seen)
    groups[0]["weight_decay"] = float("0.1")  # another object, the same value
    groups[1]["betas"] = (0.8, 0.99)
    assert same(groups, GROUP_KEYS, OPTIONAL, seen)
    for change in ({"weight_decay": 0.2}, {"betas": (0.8, 0.98)}, {"lr_mult": 1.5}):
        changed = [dict(g) for g in groups]
        changed[1].update(change)
        assert not same(changed, GROUP_KEYS, OPTIONAL, seen), change
    changed = [dict(g) for g in groups]
    del changed[1]["lr_mult"]  # back to the default
    assert not same(changed, GROUP_KEYS, OPTIONAL, seen)
    groups[0]["lr_mult"] = 1.0  # the default, now set
    assert same(groups, GROUP_KEYS, OPTIONAL, seen)
    del groups[0]["weight_decay"]  # missing: the Python reads raise the KeyError
    assert not same(groups, GROUP_KEYS, OPTIONAL, seen)


@needs_cpp
def test_same_group_values_leaves_what_it_cannot_check_to_python():
    class Group(dict):
        def __getitem__(self, key):
            return 0.5 if key == "weight_decay" else super().__getitem__(key)

    groups = [dict(weight_decay=0.1, betas=(0.9, 0.999))]
    same = host_reads._host.same_group_values
    assert same(groups, GROUP_KEYS, OPTIONAL, seen_of(groups))
    assert not same([Group(groups[0])], GROUP_KEYS, OPTIONAL, seen_of(groups))
    assert not same(groups + groups, GROUP_KEYS, OPTIONAL, seen_of(groups))  # a group added
    assert not same(groups, GROUP_KEYS, OPTIONAL, seen_of(groups)[:1])
    with pytest.raises(TypeError, match="optional_keys holds"):
        same(groups, GROUP_KEYS, ("lr_mult",), seen_of(groups))


@pytest.mark.parametrize("path", host_reads.HOST_READ_PATHS)
def test_group_values_changed_between_steps_are_followed(path, monkeypatch):
    """Each group value the hyper table holds, changed between steps to another immutable value
    (the values the C++ check compares), steps as torch.optim.AdamW with the same values."""
    answers = reads_on(path, monkeypatch, "same_group_values")
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in ours_params]
    ours = MLRAdamW([dict(params=[p], betas=(0.9, 0.999)) for p in ours_params], lr=0.1)
    ref = torch.optim.AdamW([dict(params=[p], betas=(0.9, 0.999)) for p in ref_params], lr=0.1)
    changes = [  # (group, ours, torch's)
        (0, {"weight_decay": 0.3}, {"weight_decay": 0.3}),
        (1, {"betas": (0.5, 0.99)}, {"betas": (0.5, 0.99)}),
        (0, {"eps": 1e-3}, {"eps": 1e-3}),
        (1, {"lr_mult": 0.5}, {"lr": 0.05}),
        (0, {"maximize": True}, {"maximize": True}),
        (1, {"wd_mult": 4.0}, {"weight_decay": 0.04}),
        (1, {"weight_decay": float("0.01")}, {}),  # the same value as before: nothing changes
    ]
    for k, (group, mine, theirs) in enumerate([(0, {}, {}), *changes]):  # a first step unchanged
        ours.param_groups[group].update(mine)
        ref.param_groups[group].update(theirs)
        for p, q in zip(ours_params, ref_params):
            p.grad = q.grad = torch.randn(5)
        ours.step()
        ref.step()
        for p, q in zip(ours_params, ref_params):
            torch.testing.assert_close(p, q, msg=lambda m, k=k: f"after change {k}: {m}")
    if path == "c++":  # asked at every step after the first; unchanged only at the last
        assert answers == [False] * len(changes[:-1]) + [True]


@needs_cpp
def test_kept_reads_tell_when_anything_moved():
    params = mixed_params()
    kept = KeptReads()
    assert isinstance(read_params(params, kept), ParamReads)  # nothing kept yet
    kept.keep()
    assert read_params(params, kept) is None
    params[0].grad.mul_(2)  # in place: the same address
    assert read_params(params, kept) is None
    for change, params_moved in (
            (lambda: setattr(params[0], "grad", torch.randn_like(params[0])), False),  # a new gradient
            (lambda: setattr(params[1], "grad", torch.zeros(0)), False),  # an empty one, where None was
            (lambda: setattr(params[2], "grad", None), False),
            (lambda: setattr(params[4], "data", torch.randn(7)), True),  # a new parameter address
            (lambda: setattr(params[3], "data", params[3].data.transpose(0, 2)), True)):  # the same one
        change()
        reads, expected = read_params(params, kept), python_reads(params)
        if not params_moved:  # the parameters' lists of the last kept reads hold: not made again
            assert reads.data_ptrs is None and reads.layouts is None
            reads = reads._replace(data_ptrs=expected.data_ptrs)
        else:  # made from where the parameter moved, the entries before it from what was kept
            assert reads.layouts == cpp_reads(params).layouts
        assert_same_reads(reads, expected)
        assert read_params(params, kept) is not None  # not kept: the owner did not act on it
        kept.keep()
        assert read_params(params, kept) is None
    assert read_params(params + [torch.nn.Parameter(torch.ones(1))], kept) is not None  # one added
    kept.forget()
    assert read_params(params, kept) is not None
    with pytest.raises(ValueError, match="24 bytes per parameter"):
        host_reads._host.read(params, host_reads._PLAIN_TYPES, None, bytearray(3), None)


@needs_cpp
def test_cpp_reads_take_only_tensor_types():
    """What has one of the types given is unpacked as a tensor: a type that is not a tensor type
    would be read as one, so it is refused."""
    read = host_reads._host.read
    with pytest.raises(TypeError, match="plain_types holds tensor types"):
        read([1], (int,), None, None, None)
    with pytest.raises(TypeError, match="shard_type is None or a tensor type"):
        read([1], host_reads._PLAIN_TYPES, None, None, int)


@needs_cpp
def test_kept_reads_leave_to_python_what_read_leaves():
    class Subclass(torch.Tensor):
        pass

    square = torch.nn.Parameter(torch.randn(4, 4))
    square.grad = torch.randn(4, 4)
    kept = KeptReads()
    read_params([square], kept)
    kept.keep()
    square.grad = square.grad.t()  # the same address, another order
    assert cpp_reads([square]) is None and read_params([square], kept).grad_ptrs is None
    assert not kept.fresh
    kept.keep()  # after Python reads: nothing to compare with
    assert kept.seen is None
    odd = torch.nn.Parameter(torch.randn(3)).as_subclass(Subclass).requires_grad_()
    assert host_reads._host.read([odd], host_reads._PLAIN_TYPES, None, bytearray(24), None) is None


@pytest.mark.parametrize("path", host_reads.HOST_READ_PATHS)
def test_the_steady_state_check_follows_what_user_code_does(path, monkeypatch):
    """Steps where nothing moved take the C++ steady-state check (no reads into lists); every
    change between them (a gradient written in place, re-allocated, transposed at the same address,
    dropped; a parameter's .data replaced, or transposed at the same address) steps as
    torch.optim.AdamW does."""
    # What each step's C++ reads answered: nothing moved (True), reads, or left to Python (None).
    answers = reads_on(path, monkeypatch, "read")
    torch.manual_seed(0)
    ours_params = [torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(5))]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in ours_params]
    ours = MLRAdamW(ours_params, lr=0.1)
    ref = torch.optim.AdamW(ref_params, lr=0.1)
    for p, q in zip(ours_params, ref_params):
        p.grad = torch.randn(p.shape)
        q.grad = p.grad.clone()

    def both(action):
        for params in (ours_params, ref_params):
            action(params)

    actions = [
        lambda ps: None,  # nothing: the steady state
        lambda ps: ps[0].grad.mul_(-2),  # in place, the same address
        lambda ps: setattr(ps[0], "grad", ps[0].grad.t()),  # the same address, transposed
        lambda ps: setattr(ps[0], "grad", ps[0].grad.contiguous()),  # re-allocated
        lambda ps: None,
        lambda ps: setattr(ps[1], "grad", None),  # dropped: not stepped
        lambda ps: setattr(ps[1], "grad", torch.ones(5)),
        lambda ps: setattr(ps[0], "data", ps[0].detach() + 1),  # the parameter moved
        lambda ps: None,
        lambda ps: setattr(ps[0], "data", ps[0].data.t()),  # relaid at the same address: staged
        lambda ps: setattr(ps[0], "data", ps[0].data.t()),  # back in its state's layout
        lambda ps: None,
        lambda ps: None,
    ]
    for k, action in enumerate(actions):
        both(action)
        ours.step()
        ref.step()
        for p, q in zip(ours_params, ref_params):
            torch.testing.assert_close(p, q, msg=lambda m, k=k: f"after action {k}: {m}")
    if path == "c++":  # the first step has no reads to compare with
        kinds = ["same" if a is True else "python" if a is None else "reads" for a in answers]
        assert kinds == ["reads", "same", "python", "reads", "same", "reads", "reads", "reads", "same",
                         "reads", "reads", "reads", "same"]


@pytest.mark.parametrize("path", host_reads.HOST_READ_PATHS)
def test_a_refused_step_leaves_nothing_staged(path, monkeypatch):
    """A step refused for one parameter (viewed in another shape) changes nothing for another
    relaid in the same step: once user code undoes both, the steps go back to the steady state
    (no copies, and in C++ the check that compares addresses only)."""
    answers = reads_on(path, monkeypatch, "read")
    a, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4, 4))
    opt = MLRAdamW([a, b], lr=0.1)
    a.grad, b.grad = torch.ones(4, 4), torch.ones(4, 4)
    opt.step()
    whole = b.data
    a.data, b.data = a.data.t(), b.data[:2]
    with pytest.raises(ValueError, match="now has shape"):
        opt.step()
    a.data, b.data = a.data.t(), whole
    for _ in range(2):
        opt.step()
    assert all(not bucket._staged for bucket in opt.buckets)
    if path == "c++":
        assert answers[-1] is True


@needs_cpp
def test_the_lr_column_written_in_cpp_is_numpy_s():
    lrs = [1e-3, 3, True, 0.1 / 3]  # float, int, bool
    group_index = np.array([0, 1, 1, 2, 3, 0], dtype=np.int64)
    lr_mults = np.array([1.0, 0.5, 1 / 3, 2.0, 0.7, 0.0])
    rows = np.zeros((6, 9))
    assert host_reads.write_lr_column(lrs, group_index, lr_mults, rows, 4) is True
    expected = np.array(lrs, dtype=np.float64)[group_index] * lr_mults
    assert np.array_equal(rows[:, 4], expected) and not rows[:, [0, 1, 2, 3, 5, 6, 7, 8]].any()
    assert host_reads.write_lr_column(lrs, group_index, lr_mults, rows, 4) is False  # unchanged
    lrs[3] = 0.2
    assert host_reads.write_lr_column(lrs, group_index, lr_mults, rows, 4) is True
    assert rows[4, 4] == 0.2 * 0.7
    for other in (np.float64(0.1), torch.tensor(0.1)):  # left to numpy, or to the device
        assert host_reads.write_lr_column([other, 1.0, 1.0, 1.0], group_index, lr_mults, rows, 4) is None
    with pytest.raises(ValueError, match="other sizes"):
        host_reads.write_lr_column(lrs, group_index[:5], lr_mults, rows, 4)
    with pytest.raises(IndexError, match="out of range"):
        host_reads.write_lr_column(lrs[:2], group_index, lr_mults, rows, 4)


@needs_cpp
def test_same_group_values_runs_no_python_eq():
    """A value whose == is Python code (which could edit the groups under the C++ loop) counts as
    changed: the Python reads compare it."""
    class Value(float):
        def __eq__(self, other):
            calls.append(other)
            return True

        __hash__ = float.__hash__

    calls = []
    groups = [dict(weight_decay=0.1, betas=(0.9, 0.999))]
    seen = seen_of(groups)
    groups[0]["weight_decay"] = Value(0.1)
    assert not host_reads._host.same_group_values(groups, GROUP_KEYS, OPTIONAL, seen) and calls == []


@needs_cpp
def test_reads_that_raised_are_not_compared_with(monkeypatch):
    """A check that raised after the reads (a sparse gradient) leaves nothing kept: reverting to
    the addresses of before is checked again, as the Python reads would (tied parameters)."""
    monkeypatch.setenv(HOST_READS_ENV, "c++")
    N = 1 << 20  # several tiles per segment: one launch over both tied segments would race
    a, b = torch.nn.Parameter(torch.ones(N)), torch.nn.Parameter(torch.ones(N))
    b.data = a.data  # tied: one storage
    ra, rb = torch.nn.Parameter(torch.ones(N)), torch.nn.Parameter(torch.ones(N))
    rb.data = ra.data
    ours, ref = MLRAdamW([a, b], lr=0.1), torch.optim.AdamW([ra, rb], lr=0.1)
    for _ in range(2):
        a.grad, b.grad = torch.full((N,), 1.0), torch.full((N,), -0.5)
        ra.grad, rb.grad = a.grad.clone(), b.grad.clone()
        ours.step()
        ref.step()
    tied, good = b.data, a.grad
    b.data = b.data.clone()  # untied for one step that fails
    a.grad = torch.sparse_coo_tensor([[0]], [1.0], (N,))
    with pytest.raises(RuntimeError, match="sparse"):
        ours.step()
    b.data, a.grad = tied, good  # back where the last completed check left them
    for _ in range(3):
        ours.step()
        ref.step()
    torch.testing.assert_close(a, ra)
    torch.testing.assert_close(b, rb)
