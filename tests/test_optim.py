"""swag.optim.SAM: against hand-computed updates and SAM's known behaviour on quadratics."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from swag.optim import SAM, frozen_bn
from swag.schedules import Cyclic, cyclic_schedule
from swag.snapshots import Snapshots
from tests.test_guarantee_misuse_family_args import sgd

# float64 throughout: the hand computation and SAM differ only in the order of a few sums, so
# 1e-12 relative is tens of ulps of slack.
TOL = {"rtol": 1e-12, "atol": 1e-14}


def data(generator: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(8, 3, dtype=torch.float64, generator=generator)
    y = torch.randn(8, 2, dtype=torch.float64, generator=generator)
    return x, y


def mse_grad(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """By hand: L = mean((x wᵀ + b − y)²) over N·m entries, r = x wᵀ + b − y;
    dL/dw = 2 rᵀx / (N m), dL/db = 2 Σ r / (N m)."""
    r = x @ w.T + b - y
    scale = 2.0 / r.numel()
    return scale * r.T @ x, scale * r.sum(0)


def linear(generator: torch.Generator) -> nn.Linear:
    model = nn.Linear(3, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 3, dtype=torch.float64, generator=generator))
        model.bias.copy_(torch.randn(2, dtype=torch.float64, generator=generator))
    return model


def closure_for(opt: torch.optim.Optimizer, model: nn.Module, x: Tensor, y: Tensor):  # type: ignore[no-untyped-def]
    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    return closure


@pytest.mark.parametrize("adaptive", [False, True])
def test_two_steps_match_the_hand_computation(adaptive: bool, generator: torch.Generator) -> None:
    """SGD with momentum and weight decay under SAM / ASAM, two steps (momentum carries over)."""
    x, y = data(generator)
    model = linear(generator)
    lr, mom, wd, rho, eta = 0.1, 0.9, 0.01, 0.3, 0.01
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=mom, weight_decay=wd)
    opt = SAM(base, rho=rho, adaptive=adaptive, eta=eta)

    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    buf_w = buf_b = None
    for _ in range(2):
        gw, gb = mse_grad(w, b, x, y)  # the loss gradient alone: no weight decay in ε̂
        if adaptive:
            tw, tb = w.abs() + eta, b.abs() + eta
            norm = torch.sqrt(((tw * gw) ** 2).sum() + ((tb * gb) ** 2).sum())
            ew, eb = rho * tw**2 * gw / norm, rho * tb**2 * gb / norm
        else:
            norm = torch.sqrt((gw**2).sum() + (gb**2).sum())
            ew, eb = rho * gw / norm, rho * gb / norm
        gw2, gb2 = mse_grad(w + ew, b + eb, x, y)
        dw, db = gw2 + wd * w, gb2 + wd * b  # decay applied at θ, by the base optimizer
        buf_w = dw if buf_w is None else mom * buf_w + dw
        buf_b = db if buf_b is None else mom * buf_b + db
        w, b = w - lr * buf_w, b - lr * buf_b

        opt.step(closure_for(opt, model, x, y))
    torch.testing.assert_close(model.weight.detach(), w, **TOL)
    torch.testing.assert_close(model.bias.detach(), b, **TOL)


def test_adam_base_gets_the_perturbed_gradient(generator: torch.Generator) -> None:
    """Any base: SAM(Adam) equals torch's Adam fed g' = ∇L(θ + ε̂) by hand."""
    x, y = data(generator)
    model = linear(generator)
    ref = copy.deepcopy(model)
    opt = SAM(torch.optim.Adam(model.parameters(), lr=0.01), rho=0.1)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for _ in range(3):
        w, b = ref.weight.detach(), ref.bias.detach()
        gw, gb = mse_grad(w, b, x, y)
        norm = torch.sqrt((gw**2).sum() + (gb**2).sum())
        gw2, gb2 = mse_grad(w + 0.1 * gw / norm, b + 0.1 * gb / norm, x, y)
        ref.weight.grad, ref.bias.grad = gw2, gb2
        ref_opt.step()
        opt.step(closure_for(opt, model, x, y))
    torch.testing.assert_close(model.weight.detach(), ref.weight.detach(), **TOL)
    torch.testing.assert_close(model.bias.detach(), ref.bias.detach(), **TOL)


def test_max_grad_norm_clips_the_descent_gradient(generator: torch.Generator) -> None:
    x, y = data(generator)
    model = linear(generator)
    lr, rho, clip = 0.1, 0.2, 1e-3
    opt = SAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, max_grad_norm=clip)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    gw, gb = mse_grad(w, b, x, y)
    norm = torch.sqrt((gw**2).sum() + (gb**2).sum())
    gw2, gb2 = mse_grad(w + rho * gw / norm, b + rho * gb / norm, x, y)
    norm2 = torch.sqrt((gw2**2).sum() + (gb2**2).sum())
    assert norm2 > 10 * clip  # the clip is active
    coef = clip / (norm2 + 1e-6)  # torch's clip_grad_norm_ coefficient
    opt.step(closure_for(opt, model, x, y))
    torch.testing.assert_close(model.weight.detach(), w - lr * coef * gw2, **TOL)
    torch.testing.assert_close(model.bias.detach(), b - lr * coef * gb2, **TOL)


def test_bouncing_two_cycle_on_a_quadratic() -> None:
    """On L = ½hθ² SAM with step η never settles at 0: it bounces between ±ηhρ/(2 − ηh).

    Bartlett, Long & Bousquet (2022), "The dynamics of sharpness-aware minimization": the
    2-cycle θ → −θ solves −θ = θ − ηh(θ + ρ). Plain gradient descent converges to 0.
    """
    h, eta, rho = 2.0, 0.1, 0.05
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = SAM(torch.optim.SGD([p], lr=eta), rho=rho)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = 0.5 * h * p[0] ** 2
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    trajectory = []
    for _ in range(300):
        opt.step(closure)
        trajectory.append(p.item())
    fixed = eta * h * rho / (2 - eta * h)
    assert trajectory[-2:] == pytest.approx([fixed, -fixed], rel=1e-6) or trajectory[
        -2:
    ] == pytest.approx([-fixed, fixed], rel=1e-6)


def test_drifts_towards_the_flatter_minima() -> None:
    """L = ½(1 + y²)x²: every (0, y) is a minimum, with sharpness 1 + y².

    Gradient descent stops wherever x reaches 0; SAM keeps moving along the valley towards
    y = 0, the flattest minimum (the drift Bartlett et al. 2022 describe, SAM's preference).
    """

    def final(sam: bool) -> Tensor:
        p = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
        base = torch.optim.SGD([p], lr=0.1)
        opt = SAM(base, rho=0.2) if sam else base

        def closure() -> Tensor:
            opt.zero_grad()
            loss = 0.5 * (1 + p[1] ** 2) * p[0] ** 2
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        for _ in range(500):
            if sam:
                opt.step(closure)
            else:
                closure()
                opt.step()
        return p.detach()

    gd, sam = final(False), final(True)
    assert abs(gd[0]) < 1e-6 and abs(gd[1]) > 1.5  # GD: a sharp minimum (curvature ≈ 4)
    # SAM: near the flattest (curvature ≈ 1), x bouncing at about ηhρ/(2 − ηh) ≈ 0.01
    assert abs(sam[0]) < 0.05 and abs(sam[1]) < 0.3


def test_second_forward_leaves_batchnorm_statistics_alone(generator: torch.Generator) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    x, y = data(generator)
    expected = copy.deepcopy(model)
    expected(x)  # one training forward at θ: the statistics SAM's step should leave
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.5, model=model)
    opt.step(closure_for(opt, model, x, y))
    bn, ref = model[1], expected[1]
    torch.testing.assert_close(bn.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(bn.running_var, ref.running_var, **TOL)
    assert int(bn.num_batches_tracked) == 1

    # without model=, both forwards update them (what frozen_bn prevents)
    loose = copy.deepcopy(expected)
    loose[1].reset_running_stats()
    opt2 = SAM(torch.optim.SGD(loose.parameters(), lr=0.1), rho=0.5)
    opt2.step(closure_for(opt2, loose, x, y))
    assert int(loose[1].num_batches_tracked) == 2


def test_frozen_bn_keeps_training_mode_forward() -> None:
    bn = nn.BatchNorm1d(3)
    x = torch.randn(16, 3) * 5 + 2
    with frozen_bn(bn):
        out = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0
    # normalised with the batch's own statistics, as a training forward is
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-5, rtol=0)


def test_scheduler_and_state_dict_go_through_to_the_base() -> None:
    model = nn.Linear(2, 1)
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = SAM(base, rho=0.05)
    sched = cyclic_schedule(opt, cycle=4, min_lr=0.01)
    x, y = torch.ones(4, 2), torch.zeros(4, 1)
    for _ in range(2):
        opt.step(closure_for(opt, model, x, y))
        sched.step()
    assert base.param_groups[0]["lr"] == pytest.approx(0.1 * (1 - 0.75) + 0.01 * 0.75)
    state = opt.state_dict()
    assert "momentum_buffer" in state["state"][0]

    other = nn.Linear(2, 1)
    opt2 = SAM(torch.optim.SGD(other.parameters(), lr=0.5, momentum=0.9), rho=0.05)
    opt2.load_state_dict(state)
    assert opt2.param_groups is opt2.base.param_groups
    assert opt2.param_groups[0]["lr"] == base.param_groups[0]["lr"]


def test_parameters_without_gradient_are_not_moved() -> None:
    used, unused = nn.Linear(2, 1), nn.Linear(2, 1)
    before = [p.detach().clone() for p in unused.parameters()]
    opt = SAM(torch.optim.SGD([*used.parameters(), *unused.parameters()], lr=0.1), rho=0.1)
    opt.step(closure_for(opt, used, torch.ones(4, 2), torch.zeros(4, 1)))
    assert all(torch.equal(a, p) for a, p in zip(before, unused.parameters(), strict=True))


def test_bad_use_is_named() -> None:
    model = nn.Linear(2, 1)
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="rho must be finite and > 0"):
        SAM(base, rho=-1)
    with pytest.raises(ValueError, match="max_grad_norm must be finite and > 0"):
        SAM(base, max_grad_norm=0)
    with pytest.raises(TypeError, match="already a SAM"):
        SAM(SAM(base))
    opt = SAM(torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1))
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()
    with pytest.raises(RuntimeError, match=r"call loss\.backward"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="without first_step"):
        opt.second_step()


def test_base_without_parameters_is_named() -> None:
    base = sgd()
    base.param_groups.clear()
    with pytest.raises(ValueError, match="base has no parameters"):
        SAM(base)


def problem() -> tuple[nn.Module, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Linear(3, 1), x, y


def sam_steps(opt: SAM, model: nn.Module, x: Tensor, y: Tensor, n: int, zero: bool = True) -> None:
    for _ in range(n):

        def closure() -> Tensor:
            if zero:
                opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


def test_closure_need_not_zero_gradients() -> None:
    """Before: last step's g' was added into g when the closure did not zero (as documented)."""
    runs = []
    for zero in (True, False):
        model, x, y = problem()
        sam_steps(SAM(sgd(model, momentum=0.9), rho=0.1), model, x, y, 3, zero=zero)
        runs.append(model.weight.detach().clone())
    assert torch.equal(*runs)


def test_first_step_twice_is_refused_and_theta_kept() -> None:
    model, x, y = problem()
    opt = SAM(sgd(model), rho=0.1)
    theta = model.weight.detach().clone()
    nn.functional.mse_loss(model(x), y).backward()
    opt.first_step()
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"first_step\(\) called twice"):
        opt.first_step()
    opt.base.param_groups[0]["lr"] = 0.0  # a descent of zero: second_step must give θ back
    opt.second_step()
    assert torch.equal(model.weight, theta)


def test_an_error_in_the_second_pass_leaves_theta() -> None:
    """Before: an exception (or Ctrl-C) in the second closure left the weights at θ + ε̂, and
    the next step refused to start; now θ is back and training can go on."""
    model, x, y = problem()
    opt = SAM(sgd(model), rho=0.5)
    theta = model.weight.detach().clone()
    calls = []

    def closure() -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert torch.equal(model.weight, theta)
    sam_steps(opt, model, x, y, 1)
    assert not torch.equal(model.weight, theta)


@pytest.mark.parametrize("on", ["sam", "base"])
def test_scheduler_on_wrapper_or_base_with_manual_steps(on: str) -> None:
    """LambdaLR(sam) with first_step/second_step warned 'scheduler before optimizer' (an error
    under our filterwarnings); either attachment must give the same rates."""
    model, x, y = problem()
    opt = SAM(sgd(model), rho=0.1)
    sched = cyclic_schedule(opt if on == "sam" else opt.base, cycle=4, min_lr=0.01)
    rates = []
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.first_step()
        nn.functional.mse_loss(model(x), y).backward()
        opt.second_step()
        sched.step()
        rates.append(opt.base.param_groups[0]["lr"])
    expected = [0.1 * Cyclic(4, 0.1)(k) for k in range(1, 6)]
    assert rates == pytest.approx(expected, rel=1e-12)  # float products of the same factors


def test_groups_added_or_loaded_after_wrapping_work() -> None:
    """Before: KeyError 'adaptive' for a group added to base, or a plain optimizer's state."""
    model, x, y = problem()
    extra = nn.Linear(3, 1)
    opt = SAM(sgd(model), rho=0.1)
    opt.base.add_param_group({"params": extra.parameters()})
    sam_steps(opt, model, x, y, 1)
    assert opt.param_groups[1]["rho"] == 0.1
    # resume SAM from a plain SGD's checkpoint: the same as that SGD continued under SAM
    plain_model, _, _ = problem()
    plain = sgd(plain_model, momentum=0.9)
    nn.functional.mse_loss(plain_model(x), y).backward()
    plain.step()
    other = copy.deepcopy(plain_model)
    resumed = SAM(sgd(other, momentum=0.9), rho=0.1)
    resumed.load_state_dict(copy.deepcopy(plain.state_dict()))  # as from a file: no sharing
    sam_steps(SAM(plain, rho=0.1), plain_model, x, y, 2)
    sam_steps(resumed, other, x, y, 2)
    assert torch.equal(plain_model.weight, other.weight)


def test_sparse_gradients_match_dense() -> None:
    """Before: NotImplementedError from the norm. Sparse and dense embeddings take the same
    SAM/ASAM steps; the sums differ only in order (float32, 1e-6 relative)."""
    idx = torch.tensor([1, 2, 2, 7])
    for adaptive in (False, True):
        weights = []
        for sparse in (True, False):
            torch.manual_seed(0)
            emb = nn.Embedding(10, 3, sparse=sparse)
            opt = SAM(torch.optim.SGD(emb.parameters(), lr=0.1), rho=0.2, adaptive=adaptive)
            for _ in range(2):
                opt.step(lambda e=emb: e(idx).pow(2).sum().backward())
            weights.append(emb.weight.detach())
        torch.testing.assert_close(*weights, rtol=1e-6, atol=1e-7)


def test_frozen_bn_covers_instance_norm_running_stats() -> None:
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.InstanceNorm2d(2, track_running_stats=True))
    before = copy.deepcopy(net.state_dict())
    with frozen_bn(net):
        net(torch.randn(2, 2, 4, 4))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(6, 4), nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, i: Tensor) -> Tensor:
        return self.out(self.emb(i))


def conv_bn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)
    )


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "bf16": (lambda: nn.Linear(4, 3).to(torch.bfloat16), lambda: torch.randn(8, 4).bfloat16()),
    "channels_last_bn": (
        lambda: conv_bn().to(memory_format=torch.channels_last),
        lambda: torch.randn(4, 3, 6, 6).to(memory_format=torch.channels_last),
    ),
    "tied": (Tied, lambda: torch.tensor([0, 1, 2, 5])),
    "compiled": (
        lambda: torch.compile(nn.Linear(4, 3), backend="eager"),
        lambda: torch.randn(8, 4),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_sam_with_zero_rate_gives_theta_back_bit_exactly(case: str) -> None:
    """With lr 0 the descent is a no-op, so after a full SAM step every parameter must be θ
    to the bit (restored, not θ + ε̂ − ε̂), and BatchNorm statistics those of one forward at θ."""
    make, data = CASES[case]
    torch.manual_seed(0)
    model, x = make(), data()
    ref = copy.deepcopy(model)
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9), rho=0.5, model=model)
    opt.step(lambda: model(x).float().pow(2).mean().backward())
    ref(x)  # one training forward at θ: the statistics SAM must leave behind
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    if case == "tied":
        assert model.out.weight is model.emb.weight


def test_theta_copy_follows_a_cast_model() -> None:
    """Before: θ's copy kept the float32 of the first step, so after model.double() the
    restore rounded θ to float32."""
    model, x, y = problem()
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5)
    sam_steps(opt, model, x, y, 1)
    model.double()
    with torch.no_grad():
        model.weight.add_(1e-12)  # not representable next to these values in float32
    theta = model.weight.detach().clone()
    sam_steps(opt, model, x.double(), y.double(), 1)
    assert torch.equal(model.weight, theta)


def test_resume_mid_run_is_bit_identical() -> None:
    """SAM (momentum) + cyclic schedule on the wrapper + Snapshots: 3 steps, checkpoint through
    bytes, 3 more, equals 6 straight."""

    def build(model: nn.Module) -> tuple[SAM, LambdaLR, Snapshots]:
        opt = SAM(sgd(model, momentum=0.9, weight_decay=1e-3), rho=0.1)
        return opt, cyclic_schedule(opt, cycle=2, min_lr=0.01, start=1), Snapshots(model, 4)

    def steps(model: nn.Module, parts: tuple[SAM, LambdaLR, Snapshots], ks: range) -> None:
        opt, sched, snaps = parts
        when = sched.lr_lambdas[0].collect
        for k in ks:
            sam_steps(opt, model, x, y, 1)
            sched.step()
            if when(k):
                snaps.collect()

    straight, x, y = problem()
    parts = build(straight)
    steps(straight, parts, range(1, 7))
    first, _, _ = problem()
    one = build(first)
    steps(first, one, range(1, 4))
    buf = io.BytesIO()
    torch.save(
        {"m": first.state_dict(), **{str(i): p.state_dict() for i, p in enumerate(one)}}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    second = nn.Linear(3, 1)
    second.load_state_dict(saved["m"])
    two = build(second)
    for i, part in enumerate(two):
        part.load_state_dict(saved[str(i)])
    steps(second, two, range(4, 7))
    assert torch.equal(straight.weight, second.weight)
    assert two[1].get_last_lr() == parts[1].get_last_lr()
    assert two[2].n == parts[2].n == 2 and torch.equal(two[2].snapshots, parts[2].snapshots)
