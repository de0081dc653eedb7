"""MC dropout is live in every stock module that has dropout, and nothing else leaves eval mode."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

# The Hugging Face models below are built from configs: nothing may be downloaded. Set before
# transformers is imported (by importorskip, in the tests that need it).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from torch import Tensor, nn

import swag
from swag import metrics
from swag.core.point import PointPosterior
from swag.evaluation.predict import predict

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


class ChildRateAttention(nn.Module):
    """Hugging Face BERT/GPT-2 style: reads its Dropout child's rate, gated on its own mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)
        self.dropout = nn.Dropout(rate)  # never called

    def forward(self, x: Tensor) -> Tensor:
        weights = (self.proj(x) @ x.transpose(1, 2)).softmax(-1)
        p = self.dropout.p if self.training else 0.0
        return nn.functional.dropout(weights, p, training=self.training) @ x


class FloatRateAttention(nn.Module):
    """Hugging Face ViT/Llama style: the rate is a float gated on ``self.training``."""

    def __init__(self, rate: float, width: int = D) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.attention_dropout = rate

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(self.proj(x), self.attention_dropout, self.training)


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
    "attention reading its Dropout child's rate": (lambda: ChildRateAttention(0.3), (T, D)),
    "attention with a float rate": (lambda: FloatRateAttention(0.3), (T, D)),
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
        point,
        model,
        batches(),
        num_samples=6,
        generator=torch.Generator().manual_seed(0),
        options=swag.PredictOptions(bn=False, reduce=False, mc_dropout=True),
    )
    assert probs.shape == (6, 20, 3)
    assert (probs[0] - probs[1]).abs().max() > 1e-4, "two MC passes must differ"
    assert probs.std(0).max() > 1e-4, "spread over passes must be > 0"
    assert metrics.mutual_information(probs).max() > 1e-6, "mutual information must be > 0"
    assert len(seen) == 12 and not any(training for training, _ in seen), "BatchNorm in eval"
    for _, running_mean in seen:
        torch.testing.assert_close(running_mean, stats["running_mean"], rtol=0, atol=0)
    for k, v in model[1].state_dict().items():  # the caller's model is untouched
        torch.testing.assert_close(v, stats[k], rtol=0, atol=0)


@pytest.mark.parametrize(
    "body",
    [
        "TransformerEncoderLayer",
        "MultiheadAttention",
        "Transformer",
        "attention reading its Dropout child's rate",
        "attention with a float rate",
    ],
)
def test_mc_pass_equals_torchs_own_train_mode_forward_of_the_dropout_module(body: str) -> None:
    """Reference: the body alone put in train mode by torch (``.train()``), BatchNorm in eval.

    predict seeds a forked global RNG with one draw from the generator; the reference does the
    same, so both draw the same dropout masks and must agree bit for bit.
    """
    model = net(body)
    xs = batches()
    got = predict(
        PointPosterior.from_model(model),
        model,
        xs,
        num_samples=2,
        generator=torch.Generator().manual_seed(3),
        options=swag.PredictOptions(bn=False, reduce=False, mc_dropout=True),
    )
    ref = copy.deepcopy(model).eval()
    ref[3].train()
    seed = int(torch.randint(SEED_HIGH, (), generator=torch.Generator().manual_seed(3)))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        expected = torch.stack([torch.cat([ref(x) for x in xs]).softmax(-1) for _ in range(2)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class WithBatchNorm(nn.Module):
    """A float rate next to running statistics: switching it alone could update them."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(24)
        self.attention_dropout = rate

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(self.norm(x), self.attention_dropout, self.training)


class WithLayerDrop(FloatRateAttention):
    """A float rate next to another train-only mechanism (LayerDrop)."""

    def __init__(self, rate: float, layerdrop: float) -> None:
        super().__init__(rate, 24)
        self.layerdrop = layerdrop

    def forward(self, x: Tensor) -> Tensor:
        if self.training and torch.rand(()) < self.layerdrop:
            return x
        return super().forward(x)


def test_a_float_rate_that_cannot_be_switched_on_alone_is_refused_by_name() -> None:
    cases = [
        (WithBatchNorm(0.2), r"2 \(WithBatchNorm\).*attention_dropout=0.2.*\(norm.running_mean\)"),
        (WithLayerDrop(0.2, 0.5), r"2 \(WithLayerDrop\).*dropout=0.2.*layerdrop=0.5.*layerdrop=0"),
    ]
    for module, pattern in cases:
        model = nn.Sequential(nn.Linear(4, 24), nn.Dropout(0.1), module)
        with pytest.raises(ValueError, match=pattern):
            predict(
                PointPosterior.from_model(model),
                model,
                batches(),
                options=swag.PredictOptions(bn=False, mc_dropout=True),
            )
    for module in (WithBatchNorm(0.0), WithLayerDrop(0.2, 0.0)):  # nothing hidden, or safe
        model = nn.Sequential(nn.Linear(4, 24), nn.Dropout(0.1), module).eval()
        predict(
            PointPosterior.from_model(model),
            model,
            batches(),
            num_samples=2,
            options=swag.PredictOptions(bn=False, mc_dropout=True),
        )


class ChildNextToBatchNorm(nn.Module):
    """A Dropout child it calls, next to BatchNorm: left in eval, its Dropout switched alone."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(24)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:  # what a whole network may do in train mode (auxiliary heads, ...)
            x = x * 100
        out: Tensor = self.drop(self.norm(x))
        return out


def test_an_owner_with_running_statistics_stays_in_eval_and_its_dropout_is_live() -> None:
    torch.manual_seed(0)
    owner = ChildNextToBatchNorm()
    model = nn.Sequential(nn.Linear(4, 24), owner, nn.Linear(24, 3))
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 4))
    model.eval()
    stats = {k: v.clone() for k, v in owner.norm.state_dict().items()}
    seen: list[tuple[bool, bool, dict[str, Tensor]]] = []

    def record(m: ChildNextToBatchNorm, *_: object) -> None:  # follows predict's deep copy
        seen.append((m.training, m.norm.training, copy.deepcopy(m.norm.state_dict())))

    owner.register_forward_hook(record)
    probs = predict(
        PointPosterior.from_model(model),
        model,
        batches(),
        num_samples=3,
        options=swag.PredictOptions(bn=False, reduce=False, mc_dropout=True),
    )
    assert (probs[0] - probs[1]).abs().max() > 1e-4, "its Dropout child is live"
    assert len(seen) == 6
    for owner_training, norm_training, state in seen:
        assert not owner_training and not norm_training
        for k, v in state.items():
            torch.testing.assert_close(v, stats[k], rtol=0, atol=0)


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
        PointPosterior.from_model(model),
        model,
        batches(),
        num_samples=2,
        options=swag.PredictOptions(reduce=False, mc_dropout=True),
    )
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
        predict(
            PointPosterior.from_model(model),
            model,
            batches(),
            options=swag.PredictOptions(mc_dropout=True),
        )


# Hugging Face models (an optional extra), built from configs with random weights. Their
# attention modules gate attention-probability dropout on their own ``training`` flag: BERT and
# GPT-2 through their Dropout child's ``p`` (the child is never called), ViT and Llama through
# a float ``attention_dropout``. Only that dropout is on (every other rate is 0), so the reference
# is the model's own train-mode forward, which must agree bit for bit with an MC pass.
HF_INPUT_IDS = torch.randint(1, 40, (4, 6), generator=torch.Generator().manual_seed(2))


def _hf_model(arch: str, rate: float) -> tuple[nn.Module, dict[str, Tensor]]:
    tf: Any = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {"num_labels": 3, "initializer_range": 0.5}  # wide weights: peaked attention
    ids = {"input_ids": HF_INPUT_IDS}
    if arch == "bert":
        cfg = tf.BertConfig(
            vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=rate,
            **common,
        )  # fmt: skip
        return tf.BertForSequenceClassification(cfg), ids
    if arch == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=40, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=rate, pad_token_id=0, bos_token_id=0, eos_token_id=0, **common,
        )  # fmt: skip
        return tf.GPT2ForSequenceClassification(cfg), ids
    if arch == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, intermediate_size=37, attention_dropout=rate, pad_token_id=0,
            **common,
        )  # fmt: skip
        return tf.LlamaForSequenceClassification(cfg), ids
    cfg = tf.ViTConfig(
        image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=rate,
        **common,
    )  # fmt: skip
    pixels = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return tf.ViTForImageClassification(cfg), {"pixel_values": pixels}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "vit", "llama"])
def test_hugging_face_attention_dropout_is_live_and_equals_its_own_train_mode(arch: str) -> None:
    model, batch = _hf_model(arch, 0.5)
    model.eval()
    got = predict(
        PointPosterior.from_model(model),
        model,
        [batch],
        num_samples=3,
        generator=torch.Generator().manual_seed(4),
        head=swag.Classification(output_fn=lambda out: out.logits),
        options=swag.PredictOptions(reduce=False, mc_dropout=True),
    )
    assert (got[0] - got[1]).abs().max() > 1e-3, "two MC passes must differ"
    ref = copy.deepcopy(model).train()  # only attention dropout has a rate > 0
    seed = int(torch.randint(SEED_HIGH, (), generator=torch.Generator().manual_seed(4)))
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        expected = torch.stack([ref(**batch).logits.softmax(-1) for _ in range(3)])
    # Same masks in the same order: equal up to the float32 summation of softmax probabilities.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not model.training, "the caller's model is untouched"


@pytest.mark.parametrize("arch", ["bert", "vit"])
def test_a_hugging_face_model_without_dropout_is_refused(arch: str) -> None:
    model, batch = _hf_model(arch, 0.0)
    with pytest.raises(ValueError, match="no Dropout layer with rate > 0"):
        predict(
            PointPosterior.from_model(model),
            model,
            [batch],
            options=swag.PredictOptions(mc_dropout=True),
        )
