"""PointPosterior: exact weights in, exact weights out, zero variance, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from swag import Collector
from swag.core.point import PointPosterior
from swag.persistence import _io
from tests.reference import flat_params


def net(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_model_holds_the_exact_weights(dtype: torch.dtype, device: torch.device) -> None:
    model = net(dtype=dtype).to(device)
    point = PointPosterior.from_model(model)
    assert point.mean.dtype == dtype and point.mean.device.type == device.type
    assert point.layout.names == ("0.weight", "0.bias", "2.weight", "2.bias")
    torch.testing.assert_close(
        point.mean.cpu().double(), torch.from_numpy(flat_params(model)), rtol=0, atol=0
    )
    # a copy, not a view: training the model further leaves the posterior alone
    before = point.mean.clone()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    torch.testing.assert_close(point.mean, before, rtol=0, atol=0)


def test_params_selects_a_subset() -> None:
    model = net()
    point = PointPosterior.from_model(model, "2")
    assert point.layout.names == ("2.weight", "2.bias") and point.mean.shape == (10,)
    torch.testing.assert_close(
        point.mean, torch.cat([p.reshape(-1) for p in model[2].parameters()]), rtol=0, atol=0
    )


def test_sample_is_the_mean_repeated_and_ignores_scale() -> None:
    point = PointPosterior.from_model(net())
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    draws = point.diagonal().sample((2, 3), scale=10.0, generator=g)
    assert draws.shape == (2, 3, point.layout.size)
    torch.testing.assert_close(draws, point.mean.expand(2, 3, -1), rtol=0, atol=0)
    assert torch.equal(g.get_state(), state), "a point posterior must not consume randomness"
    draws.zero_()  # a new tensor: writing into it leaves the mean alone
    assert point.mean.abs().sum() > 0
    assert point.sample().shape == (point.layout.size,)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        point.sample(scale=-1.0)
    assert point.diagonal() is point  # a zero covariance is its own diagonal view
    with pytest.warns(DeprecationWarning, match=r"posterior\.diagonal\(\)"):
        torch.testing.assert_close(point.sample(diagonal=True), point.mean, rtol=0, atol=0)


def test_to_model_and_apply_restore_the_weights() -> None:
    model = net(0)
    point = PointPosterior.from_model(model)
    other = net(1)
    copy = point.to_model(other)
    assert copy is not other
    torch.testing.assert_close(torch.from_numpy(flat_params(copy)), point.mean.double())
    assert not torch.allclose(torch.from_numpy(flat_params(other)), point.mean.double())
    point.apply_(other)
    torch.testing.assert_close(
        torch.from_numpy(flat_params(other)), point.mean.double(), rtol=0, atol=0
    )


def test_shape_mismatch_is_rejected() -> None:
    point = PointPosterior.from_model(net())
    with pytest.raises(ValueError, match=r"mean must have shape \(26,\)"):
        PointPosterior(point.mean[:-1], point.layout)
    with pytest.raises(ValueError, match="floating point"):
        PointPosterior(point.mean.long(), point.layout)


def test_to_changes_dtype() -> None:
    point = PointPosterior.from_model(net())
    wide = point.to(dtype=torch.float64)
    assert wide.mean.dtype == torch.float64 and wide.layout == point.layout
    torch.testing.assert_close(wide.mean.float(), point.mean, rtol=0, atol=0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    point = PointPosterior.from_model(net(dtype=torch.float64))
    path = tmp_path / "point.safetensors"
    point.save(path)
    loaded = PointPosterior.load(path, device="cpu")
    assert loaded.layout == point.layout
    torch.testing.assert_close(loaded.mean, point.mean, rtol=0, atol=0)
    assert loaded.mean.dtype == torch.float64


def test_load_rejects_other_kinds_and_damage(tmp_path: Path) -> None:
    model = net()
    collector = Collector(model, max_rank=2)
    collector.collect()
    swag_file = tmp_path / "swag.safetensors"
    collector.posterior().save(swag_file)
    with pytest.raises(ValueError, match="holds a 'swag_posterior', not a 'point_posterior'"):
        PointPosterior.load(swag_file)
    point = PointPosterior.from_model(model)
    bad = tmp_path / "bad.safetensors"
    _io.save_file(
        bad, "point_posterior", {"mean": point.mean[:5]}, {"layout": point.layout.to_json()}
    )
    with pytest.raises(ValueError, match=r"'mean' has shape \(5,\), expected \(26,\)"):
        PointPosterior.load(bad)
