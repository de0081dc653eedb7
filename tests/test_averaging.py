"""Averaging rules (EMA, PowerEMA, LAWA) on the Collector, against torch and float64 moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import swag
from swag.averaging import (
    EMA,
    LAWA,
    AveragingRule,
    PowerEMA,
    gamma_to_sigma_rel,
    sigma_rel_to_gamma,
)

N = 12  # iterates per run
K = 4  # deviations kept


def _model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(device)


def _walk(model: nn.Module, collect: list, steps: int = N) -> list[torch.Tensor]:
    """Move the parameters ``steps`` times (an offset of 3 plus noise); collect after each."""
    seen = []
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        with torch.no_grad():
            for p in model.parameters():
                noise = torch.randn(p.shape, generator=gen).to(p.device)
                p.copy_(3.0 + 0.1 * noise)
        seen.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double())
        for fn in collect:
            fn()
    return seen


def _weights(rule: AveragingRule | None, n: int) -> np.ndarray:
    """Brute-force normalised weights of iterates 1..n under ``rule``, in float64."""
    if isinstance(rule, LAWA):
        w = np.zeros(n)
        w[max(0, n - rule.window) :] = 1.0
        return w / w.sum()
    alphas = [1.0 / i if rule is None else rule.alpha(i) for i in range(1, n + 1)]  # type: ignore[attr-defined]
    return np.array([a * math.prod(1 - b for b in alphas[i + 1 :]) for i, a in enumerate(alphas)])


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999, 1.0])
def test_mean_only_ema_is_bit_identical_to_torch_averaged_model(device, decay: float) -> None:
    model = _model(device)
    ours = swag.Collector(model, 0, average=EMA(decay), variance=False)
    torch_ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    _walk(model, [ours.collect, lambda: torch_ema.update_parameters(model)])
    theirs = torch.cat([p.detach().reshape(-1) for p in torch_ema.module.parameters()])
    assert torch.equal(ours.mean, theirs)


def test_mean_only_equal_average_matches_torch_swa(device) -> None:
    model = _model(device)
    ours = swag.Collector(model, 0, variance=False)
    torch_swa = AveragedModel(model)
    seen = _walk(model, [ours.collect, lambda: torch_swa.update_parameters(model)])
    theirs = torch.cat([p.detach().reshape(-1) for p in torch_swa.module.parameters()])
    # torch lerps by a float32 1/(n+1), we by a float64 one: a few float32 ulps of |θ| ≈ 3
    torch.testing.assert_close(ours.mean, theirs, rtol=0, atol=4e-6)
    ref = torch.stack(seen).mean(0).to(ours.mean)
    torch.testing.assert_close(ours.mean, ref, rtol=0, atol=4e-6)


RULES: list[AveragingRule | None] = [
    None,
    EMA(0.8),
    EMA(0.999, warmup=True),
    EMA(0.9, warmup=True, warmup_gamma=2.0, warmup_power=0.75, min_decay=0.1),
    PowerEMA(gamma=3.0),
    PowerEMA(sigma_rel=0.2),
    LAWA(1),
    LAWA(5),
    LAWA(N + 3),
]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_weighted_moments_and_ring_match_float64(device, rule: AveragingRule | None) -> None:
    model = _model(device)
    collector = swag.Collector(model, K, average=rule)
    seen = torch.stack(_walk(model, [collector.collect])).cpu().numpy()
    post = collector.posterior(min_variance=0.0)
    w = _weights(rule, N)
    mean = w @ seen
    var = w @ (seen - mean) ** 2
    running = np.stack([_weights(rule, i) @ seen[:i] for i in range(1, N + 1)])
    devs = (seen - running)[-K:]
    # float32 offsets from θ_1 (|θ − θ_1| ≲ 0.5): rounding ~1e-7 per op over N steps
    np.testing.assert_allclose(post.mean.double().cpu(), mean, rtol=0, atol=2e-6)
    np.testing.assert_allclose(post.variance.double().cpu(), var, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(post.deviations.double().cpu(), devs, rtol=0, atol=2e-6)


@pytest.mark.parametrize("rule", [None, EMA(0.7), PowerEMA(gamma=2.0)], ids=repr)
def test_mean_only_path_agrees_with_the_full_statistics(device, rule) -> None:
    model = _model(device)
    fast = swag.Collector(model, 0, average=rule, variance=False)
    full = swag.Collector(model, 0, average=rule)
    _walk(model, [fast.collect, full.collect])
    torch.testing.assert_close(fast.mean, full.mean, rtol=0, atol=2e-6)
    assert fast.shift.numel() == fast.m2.numel() == 0  # holds 1·P


def test_ema_warmup_follows_timm_schedule() -> None:
    rule = EMA(0.9999, warmup=True)
    # timm ModelEmaV3 at step t: 1 − (1 + t)^(−2/3); the first update copies
    assert rule.beta(1) == 0.0
    assert rule.beta(2) == pytest.approx(1 - 2 ** (-2 / 3))
    assert rule.beta(1001) == pytest.approx(1 - 1001 ** (-2 / 3))
    assert EMA(0.5, warmup=True).beta(10**6) == 0.5
    assert EMA(0.9, warmup=True, min_decay=0.5).beta(2) == 0.5


def test_sigma_rel_matches_edm2_values() -> None:
    # EDM2 (Karras et al. 2024, sec. 3): σ_rel = 0.05 ↔ γ = 16.97, σ_rel = 0.10 ↔ γ = 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert gamma_to_sigma_rel(sigma_rel_to_gamma(0.13)) == pytest.approx(0.13)
    assert PowerEMA(sigma_rel=0.05).exponent == pytest.approx(16.97, abs=0.01)


def test_gradient_accumulation_averages_once_per_optimizer_step() -> None:
    model = _model(torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    collector = swag.Collector(model, 0, average=EMA(0.5))
    gen = torch.Generator().manual_seed(3)
    stepped = []
    for micro in range(12):
        x = torch.randn(8, 6, generator=gen)
        (model(x).square().mean() / 4).backward()
        if (micro + 1) % 4 == 0:  # 4 micro-batches per optimizer step
            opt.step()
            opt.zero_grad()
            collector.collect()
            stepped.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert collector.n == 3
    w = _weights(EMA(0.5), 3)
    ref = w @ torch.stack(stepped).double().numpy()
    np.testing.assert_allclose(collector.mean.double(), ref, rtol=0, atol=1e-6)


def test_lawa_state_dict_round_trip_continues_identically() -> None:
    model = _model(torch.device("cpu"))
    a = swag.Collector(model, 2, average=LAWA(3))
    _walk(model, [a.collect], steps=4)
    b = swag.Collector(model, 2, average=LAWA(3))
    b.load_state_dict(a.state_dict())
    _walk(model, [a.collect, b.collect], steps=3)
    assert torch.equal(a.posterior().mean, b.posterior().mean)
    assert torch.equal(a.posterior().deviations, b.posterior().deviations)


def test_bad_arguments_name_the_fix() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="decay"):
        EMA(1.5)
    with pytest.raises(TypeError, match="decay"):
        EMA("0.9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_decay"):
        EMA(0.5, min_decay=0.7)
    with pytest.raises(ValueError, match="exactly one"):
        PowerEMA()
    with pytest.raises(ValueError, match="sigma_rel"):
        PowerEMA(sigma_rel=0.5)
    with pytest.raises(ValueError, match="window"):
        LAWA(0)
    with pytest.raises(TypeError, match="average"):
        swag.Collector(model, 0, average=0.9)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_rank must be 0"):
        swag.Collector(model, 3, variance=False)
    with pytest.raises(ValueError, match="LAWA"):
        swag.Collector(model, 0, average=LAWA(2), variance=False)
    fast = swag.Collector(model, 0, variance=False)
    fast.collect()
    with pytest.raises(RuntimeError, match="variance=False"):
        fast.posterior()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    fast.collect()
    with pytest.raises(ValueError, match="NaN"):
        _ = fast.mean


def test_state_of_one_rule_is_refused_by_another() -> None:
    model = _model(torch.device("cpu"))
    ema = swag.Collector(model, 2, average=EMA(0.9))
    _walk(model, [ema.collect], steps=3)
    for other in (swag.Collector(model, 2), swag.Collector(model, 2, average=EMA(0.8))):
        with pytest.raises(RuntimeError, match="average="):
            other.load_state_dict(ema.state_dict())
        assert other.n == 0  # nothing loaded


def test_files_refuse_a_rule_they_cannot_record(tmp_path) -> None:
    from swag import distributed as sd

    model = _model(torch.device("cpu"))
    lawa = swag.Collector(model, 2, average=LAWA(2))
    _walk(model, [lawa.collect], steps=3)
    with pytest.raises(ValueError, match="average="):
        sd.save(lawa, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="average="):
        lawa.save(tmp_path / "c.safetensors")
    assert not list(tmp_path.iterdir())
