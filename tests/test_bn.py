"""update_bn: same statistics as torch.optim.swa_utils.update_bn, for any batch shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn as torch_update_bn
from torch.utils.data import DataLoader

import swag
from swag import predict, update_bn
from swag.core.point import PointPosterior
from swag.evaluation.bn import has_batchnorm
from tests.test_predict import Stream


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8),
        nn.BatchNorm1d(8, momentum=0.3), nn.Linear(8, 3),
    )  # fmt: skip


def batches(n: int = 5, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g) * 3 + 1, torch.zeros(16)) for _ in range(n)]


def bn_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_matches_torch_on_tuple_batches() -> None:
    ours, theirs = bn_net(), bn_net()
    data = batches()
    update_bn(data, ours)
    torch_update_bn(data, theirs)
    for (k, a), b in zip(bn_state(ours).items(), bn_state(theirs).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # and the result really is the average over all batches, not the last one
    assert not torch.allclose(
        bn_state(ours)["1.running_mean"], bn_state(bn_net())["1.running_mean"]
    )


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = bn_net()

    def forward(self, pixels: Tensor, mask: Tensor | None = None) -> Tensor:
        out: Tensor = self.net(pixels)
        return out


def test_dict_batches_are_keyword_arguments() -> None:
    ours, ref = DictNet(), bn_net()
    data = batches()
    update_bn(
        [{"pixels": x, "labels": y} for x, y in data],
        ours,
        input_fn=lambda b: {"pixels": b["pixels"]},
    )
    torch_update_bn(data, ref)
    torch.testing.assert_close(bn_state(ours.net), bn_state(ref), rtol=0, atol=0)
    # without input_fn, a dict is passed whole as keyword arguments
    with pytest.raises(TypeError, match="labels"):
        update_bn([{"pixels": data[0][0], "labels": data[0][1]}], DictNet())


def test_plain_tensor_batches_and_num_batches() -> None:
    ours, ref = bn_net(), bn_net()
    data = batches(6)
    update_bn((x for x, _ in data), ours, num_batches=3)
    torch_update_bn(data[:3], ref)
    torch.testing.assert_close(bn_state(ours), bn_state(ref), rtol=0, atol=0)


def test_restores_momentum_and_mode() -> None:
    model = bn_net().eval()
    update_bn(batches(2), model)
    assert not model.training
    assert model[1].momentum == 0.1 and model[5].momentum == 0.3


def test_no_batchnorm_reads_no_batch() -> None:
    def never() -> Iterator[Any]:
        raise AssertionError("a model without BatchNorm must not consume the loader")
        yield

    model = nn.Linear(3, 2)
    before = model.weight.clone()
    update_bn(never(), model)
    assert torch.equal(model.weight, before)


def test_errors() -> None:
    with pytest.raises(ValueError, match="num_batches must be an int >= 1"):
        update_bn(batches(1), bn_net(), num_batches=0)
    with pytest.raises(ValueError, match="yielded no batch"):
        update_bn([], bn_net())
    with pytest.raises(ValueError, match="empty tuple/list batch"):
        update_bn([()], bn_net())


def test_device_argument(device: torch.device) -> None:
    model = bn_net().to(device)
    update_bn(batches(2), model, device=device)
    assert model[1].running_mean.device.type == device.type


def test_failed_refresh_puts_the_previous_statistics_back() -> None:
    model = bn_net()
    update_bn(batches(3, seed=1), model)
    before = {k: v.clone() for k, v in bn_state(model).items()}

    def breaks_after_two() -> Iterator[tuple[Tensor, Tensor]]:
        yield from batches(2, seed=2)
        raise OSError("disk went away")

    for loader, error in (([], ValueError), (breaks_after_two(), OSError)):
        with pytest.raises(error):
            update_bn(loader, model)
        for k, v in bn_state(model).items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
        assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [0.3]


def test_every_submodule_mode_is_restored() -> None:
    model = bn_net()
    model.train()
    model[4].eval()  # a user froze one layer
    update_bn(batches(2), model)
    assert model.training and not model[4].training
    assert all(m.training for i, m in enumerate(model) if i != 4)


NEEDS_REFRESH = {
    "BatchNorm1d": lambda: nn.BatchNorm1d(3),
    "BatchNorm2d": lambda: nn.BatchNorm2d(3),
    "BatchNorm3d": lambda: nn.BatchNorm3d(3),
    "LazyBatchNorm1d": lambda: nn.LazyBatchNorm1d(),
    "SyncBatchNorm": lambda: nn.SyncBatchNorm(3),
    "InstanceNorm1d": lambda: nn.InstanceNorm1d(3, track_running_stats=True),
    "InstanceNorm2d": lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
    "InstanceNorm3d": lambda: nn.InstanceNorm3d(3, track_running_stats=True),
}


NO_REFRESH = {
    "BatchNorm2d untracked": lambda: nn.BatchNorm2d(3, track_running_stats=False),
    "InstanceNorm2d untracked": lambda: nn.InstanceNorm2d(3),
    "GroupNorm": lambda: nn.GroupNorm(1, 3),
    "LayerNorm": lambda: nn.LayerNorm(3),
}


@pytest.mark.parametrize("name", [*NEEDS_REFRESH, *NO_REFRESH])
def test_one_helper_says_which_norm_layers_need_a_refresh(name: str) -> None:
    layer = {**NEEDS_REFRESH, **NO_REFRESH}[name]()
    assert has_batchnorm(nn.Sequential(nn.Identity(), layer)) is (name in NEEDS_REFRESH)


@pytest.mark.slow  # importing Lightning takes ~25 s on the shared runner
def test_lightning_uses_the_same_helper() -> None:
    pytest.importorskip("lightning")
    from swag.integrations import _lightning_checks

    assert _lightning_checks.has_batchnorm is has_batchnorm


@pytest.mark.parametrize("momentum", [0.1, None])
def test_instance_norm_refresh_is_the_average_of_the_batches(momentum: float | None) -> None:
    """Reference: each batch's statistics from a fresh layer with momentum 1, averaged; the
    layer's own momentum (None included, which InstanceNorm reads as "no update") is restored."""
    g = torch.Generator().manual_seed(2)
    norm = nn.InstanceNorm2d(3, momentum=momentum, track_running_stats=True)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), norm)
    batches = [torch.randn(4, 2, 6, 6, generator=g) + i for i in range(3)]
    means, variances = [], []
    with torch.no_grad():
        for x in batches:
            fresh = nn.InstanceNorm2d(3, momentum=1.0, track_running_stats=True)
            fresh(model[0](x))
            means.append(fresh.running_mean)
            variances.append(fresh.running_var)
    update_bn(batches, model)
    assert norm.momentum == momentum and model.training  # both as they were
    torch.testing.assert_close(norm.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(norm.running_var, torch.stack(variances).mean(0))


def test_bn_loader_without_len_is_accepted() -> None:
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    post = PointPosterior.from_model(model)
    x, y = torch.randn(12, 3, generator=g), torch.zeros(12, dtype=torch.long)
    stream = DataLoader(Stream(x, y), batch_size=6)
    got = predict(post, model, [x], options=swag.PredictOptions(bn=swag.BNRefresh(stream)))
    want = predict(post, model, [x], options=swag.PredictOptions(bn=swag.BNRefresh(list(stream))))
    torch.testing.assert_close(got, want)
