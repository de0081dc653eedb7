"""update_bn: same statistics as torch.optim.swa_utils.update_bn, for any batch shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn as torch_update_bn

from swag import update_bn


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
