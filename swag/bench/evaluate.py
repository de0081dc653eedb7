"""Benchmark evaluation: every method's predictions on one stacked input, and their scores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from swag import metrics
from swag.bench.config import BenchConfig
from swag.bench.train import Run
from swag.multiswag import MultiSWAG
from swag.point import PointPosterior
from swag.posterior import Posterior
from swag.predict import predict
from swag.temperature import apply_temperature, fit_temperature


@dataclass
class EvalData:
    """The evaluation inputs, stacked as ``[test; ood; shift]`` so each sample is one pass."""

    test_x: Tensor
    test_y: Tensor
    ood_x: Tensor
    shift_x: Tensor
    shift_y: Tensor
    val_x: Tensor
    val_y: Tensor
    bn_x: Tensor

    @property
    def stacked(self) -> Tensor:
        return torch.cat([self.test_x, self.ood_x, self.shift_x])

    def split(self, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(..., N_total, C)`` → test, ood, shift parts."""
        a, b = len(self.test_x), len(self.test_x) + len(self.ood_x)
        return probs[..., :a, :], probs[..., a:b, :], probs[..., b:, :]


def loader(x: Tensor, batch_size: int) -> list[Tensor]:
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def method_predictions(
    cfg: BenchConfig,
    sgd: list[Run],
    swag: list[Run],
    data: EvalData,
    *,
    seed: int,
    device: torch.device,
    progress: bool,
) -> dict[str, tuple[Tensor, float]]:
    """Per-sample probabilities ``(S, N_total, C)`` and seconds taken, for every method."""
    model = sgd[0].model
    inputs = loader(data.stacked, cfg.eval_batch_size)
    bn = loader(data.bn_x, cfg.batch_size)
    posteriors: list[Posterior] = [r.collector.posterior() for r in swag if r.collector]
    points: list[Posterior] = [PointPosterior.from_model(r.model) for r in sgd]

    def bma(
        post: Posterior,
        samples: int,
        scale: float = 0.0,
        *,
        diagonal: bool = False,
        mc_dropout: bool = False,
    ) -> Callable[[], Tensor]:
        return lambda: predict(
            post, model, inputs, num_samples=samples, scale=scale, diagonal=diagonal,
            bn_loader=bn, bn_batches=cfg.bn_batches, mc_dropout=mc_dropout, reduce=False,
            generator=torch.Generator().manual_seed(seed), device=device, progress=progress,
        ).cpu()  # fmt: skip

    methods: dict[str, Callable[[], Tensor]] = {
        "SGD": lambda: _forward(model, inputs, device).unsqueeze(0),
        "SWA": bma(PointPosterior(posteriors[0].mean, posteriors[0].layout), 1),
        "SWAG-Diag": bma(posteriors[0], cfg.num_samples, cfg.diag_scale, diagonal=True),
        "SWAG": bma(posteriors[0], cfg.num_samples, cfg.scale),
        "MultiSWAG": bma(MultiSWAG(posteriors), cfg.num_samples, cfg.scale),
        "Deep ensemble": bma(MultiSWAG(points), len(points)),
        "SGD + temp. scaling": lambda: _temperature_scaled(model, inputs, data, cfg, device),
        "MC dropout": bma(points[0], cfg.num_samples, mc_dropout=True),
    }
    out = {}
    for name, fn in methods.items():
        start = time.perf_counter()
        out[name] = (fn(), time.perf_counter() - start)
    return out


@torch.no_grad()
def _logits(model: nn.Module, inputs: list[Tensor], device: torch.device) -> Tensor:
    """The model's logits in eval mode, with the BatchNorm statistics it was trained with."""
    model.eval()
    return torch.cat([model(x.to(device)).cpu() for x in inputs])


def _forward(model: nn.Module, inputs: list[Tensor], device: torch.device) -> Tensor:
    return _logits(model, inputs, device).softmax(-1)


def _temperature_scaled(
    model: nn.Module, inputs: list[Tensor], data: EvalData, cfg: BenchConfig, device: torch.device
) -> Tensor:
    val_logits = _logits(model, loader(data.val_x, cfg.eval_batch_size), device)
    temperature = fit_temperature(val_logits, data.val_y)
    logits = _logits(model, inputs, device)
    return apply_temperature(logits, temperature).softmax(-1).unsqueeze(0)


def score(per_sample: Tensor, data: EvalData) -> dict[str, float]:
    """Test metrics, shifted-test metrics, and OOD detection (test vs ood) for one method.

    OOD scores: predictive entropy of the BMA, and mutual information when there are 2+ samples
    (one sample has none: those entries are NaN).
    """
    probs = per_sample.mean(0)
    test, ood, shift = data.split(probs)
    out = metrics.summary(test, data.test_y)
    out |= {f"shift_{k}": v for k, v in metrics.summary(shift, data.shift_y).items()}
    test_s, ood_s, _ = data.split(per_sample)
    scores = {"entropy": (metrics.predictive_entropy(test), metrics.predictive_entropy(ood))}
    if per_sample.shape[0] > 1:
        scores["mi"] = (metrics.mutual_information(test_s), metrics.mutual_information(ood_s))
    detectors = {
        "auroc": metrics.auroc,
        "aupr_in": metrics.aupr_in,
        "aupr_out": metrics.aupr_out,
        "fpr95": metrics.fpr_at_tpr,
    }
    for name in ("entropy", "mi"):
        pair = scores.get(name)
        for metric, fn in detectors.items():
            out[f"ood_{metric}_{name}"] = float("nan") if pair is None else fn(*pair)
    return out
