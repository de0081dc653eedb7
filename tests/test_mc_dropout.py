"""MC dropout is live in every stock module that has dropout, and nothing else leaves eval mode."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from swag import metrics
from swag.point import PointPosterior
from swag.predict import predict

SEED_HIGH = 2**63 - 1  # predict draws one seed from the generator first (documented)
D, T = 8, 3  # model width and sequence length of the attention cases


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Twice(nn.Module):
    """Calls a two-input module (decoder layer, Transformer) or MHA with ``x`` everywhere."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.body, nn.MultiheadAttention):
            out: Tensor = self.body(x, x, x, need_weights=False)[0]
            return out
        out = self.body(x, x)
        return out


class FirstOutput(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)[0]
        return out


def _encoder_stack() -> nn.Module:
    layer = nn.TransformerEncoderLayer(D, 2, 16, dropout=0.2, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


# name -> (the dropout-bearing body, the shape it takes after Linear(4, 24) + BatchNorm1d(24))
BODIES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "TransformerEncoderLayer": (
        lambda: nn.TransformerEncoderLayer(D, 2, 16, dropout=0.2, batch_first=True),
        (T, D),
    ),
    "TransformerEncoder": (_encoder_stack, (T, D)),
    "TransformerDecoderLayer": (
        lambda: Twice(nn.TransformerDecoderLayer(D, 2, 16, dropout=0.2, batch_first=True)),
        (T, D),
    ),
    "Transformer": (
        lambda: Twice(nn.Transformer(D, 2, 1, 1, 16, dropout=0.2, batch_first=True)),
        (T, D),
    ),
    "MultiheadAttention": (
        lambda: Twice(nn.MultiheadAttention(D, 2, dropout=0.3, batch_first=True)),
        (T, D),
    ),
    "LSTM(2 layers)": (lambda: FirstOutput(nn.LSTM(D, D, 2, dropout=0.3)), (T, D)),
    "Dropout": (lambda: nn.Dropout(0.3), (24,)),
    "Dropout1d": (lambda: nn.Dropout1d(0.3), (6, 4)),
    "Dropout2d": (lambda: nn.Dropout2d(0.3), (6, 2, 2)),
    "Dropout3d": (lambda: nn.Dropout3d(0.3), (3, 2, 2, 2)),
    "AlphaDropout": (lambda: nn.AlphaDropout(0.3), (24,)),
    "FeatureAlphaDropout": (lambda: nn.FeatureAlphaDropout(0.3), (6, 4)),
}


def net(body: str) -> nn.Sequential:
    torch.manual_seed(0)
    make, shape = BODIES[body]
    head = [nn.Flatten(), nn.LazyLinear(3)]
    model = nn.Sequential(nn.Linear(4, 24), nn.BatchNorm1d(24), Reshape(*shape), make(), *head)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics, then frozen
            model(torch.randn(16, 4) * 2 + 1)
    return model.eval()


def batches() -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(10, 4, generator=g) for _ in range(2)]


@pytest.mark.parametrize("body", list(BODIES))
def test_every_dropout_module_is_stochastic_and_batchnorm_stays_frozen(body: str) -> None:
    model = net(body)
    stats = {k: v.clone() for k, v in model[1].state_dict().items()}
    seen: list[tuple[bool, Tensor]] = []
    model[1].register_forward_hook(lambda m, *_: seen.append((m.training, m.running_mean.clone())))
    point = PointPosterior.from_model(model)
    probs = predict(
        point, model, batches(), num_samples=6, mc_dropout=True, bn_loader=False, reduce=False,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert probs.shape == (6, 20, 3)
    assert (probs[0] - probs[1]).abs().max() > 1e-4, "two MC passes must differ"
    assert probs.std(0).max() > 1e-4, "spread over passes must be > 0"
    assert metrics.mutual_information(probs).max() > 1e-6, "mutual information must be > 0"
    assert len(seen) == 12 and not any(training for training, _ in seen), "BatchNorm in eval"
    for _, running_mean in seen:
        torch.testing.assert_close(running_mean, stats["running_mean"], rtol=0, atol=0)
    for k, v in model[1].state_dict().items():  # the caller's model is untouched
        torch.testing.assert_close(v, stats[k], rtol=0, atol=0)


@pytest.mark.parametrize("body", ["TransformerEncoderLayer", "MultiheadAttention", "Transformer"])
def test_mc_pass_equals_torchs_own_train_mode_forward_of_the_dropout_module(body: str) -> None:
    """Reference: the body alone put in train mode by torch (``.train()``), BatchNorm in eval.

    predict seeds a forked global RNG with one draw from the generator; the reference does the
    same, so both draw the same dropout masks and must agree bit for bit.
    """
    model = net(body)
    xs = batches()
    got = predict(
        PointPosterior.from_model(model), model, xs, num_samples=2, mc_dropout=True,
        bn_loader=False, reduce=False, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    ref = copy.deepcopy(model).eval()
    ref[3].train()
    seed = int(torch.randint(SEED_HIGH, (), generator=torch.Generator().manual_seed(3)))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        expected = torch.stack([torch.cat([ref(x) for x in xs]).softmax(-1) for _ in range(2)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class FloatRateAttention(nn.Module):
    """Hugging Face style: the attention dropout rate is a float gated on ``self.training``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.proj = nn.Linear(24, 24)
        self.attention_dropout = rate

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(self.proj(x), self.attention_dropout, self.training)


def test_a_float_rate_that_cannot_be_switched_on_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Linear(4, 24), nn.Dropout(0.1), FloatRateAttention(0.2))
    with pytest.raises(ValueError, match=r"make 2 \(FloatRateAttention\).*attention_dropout"):
        predict(PointPosterior.from_model(model), model, batches(), mc_dropout=True)
    inert = nn.Sequential(nn.Linear(4, 24), nn.Dropout(0.1), FloatRateAttention(0.0))
    predict(PointPosterior.from_model(inert), inert, batches(), num_samples=2, mc_dropout=True)


class RateAndModule(nn.Module):
    """Keeps its rate as a float only to build the Dropout it calls: nothing is hidden."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.dropout_rate = rate
        self.drop = nn.Dropout(rate)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.drop(x)
        return out


def test_a_float_rate_that_built_a_dropout_child_is_not_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 24), RateAndModule(0.3), nn.Linear(24, 3))
    probs = predict(
        PointPosterior.from_model(model), model, batches(), num_samples=2, mc_dropout=True,
        reduce=False,
    )  # fmt: skip
    assert (probs[0] - probs[1]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.0)),
        nn.Sequential(Reshape(1, 4), FirstOutput(nn.LSTM(4, 3, 1)), nn.Flatten()),
        nn.Sequential(Reshape(1, 4), nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0)),
    ],
    ids=["Dropout(0)", "LSTM(1 layer)", "TransformerEncoderLayer(dropout=0)"],
)
def test_a_model_without_live_dropout_is_refused(model: nn.Module) -> None:
    with pytest.raises(ValueError, match="no Dropout layer with rate > 0"):
        predict(PointPosterior.from_model(model), model, batches(), mc_dropout=True)
