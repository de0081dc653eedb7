"""Benchmark evaluation: every method's predictions on one stacked input, and their scores.

The methods are a registry (:data:`METHODS`): a name, the training runs it needs, and how it
predicts. ``swag bench --skip NAME`` drops rows; a new method is one more entry.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from swag.bench._config import BenchConfig
from swag.bench._progress import Progress
from swag.bench._train import Kind, Run
from swag.core._posterior_base import Posterior
from swag.core.multiswag import MultiSWAG
from swag.core.point import PointPosterior
from swag.evaluation import metrics
from swag.evaluation.conformal import SplitConformal
from swag.evaluation.fit_scale import fit_scale
from swag.evaluation.predict import BNRefresh, Classification, PredictOptions, predict
from swag.evaluation.temperature import apply_temperature, fit_temperature

T = TypeVar("T")


@dataclass
class EvalData:
    """The evaluation inputs, stacked as ``[test; ood; shift; intensities]``: one pass each.

    ``intensity_sets`` names the shift-intensity sets (Fashion-MNIST-C corruptions at 1..5 and
    rotations), ``(corruption, level)`` in the order of their blocks in ``intensity_x``; every
    block holds the images of ``intensity_y``.
    """

    test_x: Tensor
    test_y: Tensor
    ood_x: Tensor
    shift_x: Tensor
    shift_y: Tensor
    val_x: Tensor
    val_y: Tensor
    bn_x: Tensor
    intensity_x: Tensor = field(default_factory=lambda: torch.empty(0))
    intensity_y: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    intensity_sets: list[tuple[str, float]] = field(default_factory=list)
    train_x: Tensor = field(default_factory=lambda: torch.empty(0))
    train_y: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    @property
    def stacked(self) -> Tensor:
        parts = [self.test_x, self.ood_x, self.shift_x]
        return torch.cat(parts + ([self.intensity_x] if self.intensity_sets else []))

    def split(self, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(..., N_total, C)`` → test, ood, shift parts."""
        a, b = len(self.test_x), len(self.test_x) + len(self.ood_x)
        c = b + len(self.shift_x)
        return probs[..., :a, :], probs[..., a:b, :], probs[..., b:c, :]

    def intensity_blocks(self, probs: Tensor) -> list[Tensor]:
        """``(..., N_total, C)`` → one ``(..., k, C)`` block per entry of ``intensity_sets``."""
        start = len(self.test_x) + len(self.ood_x) + len(self.shift_x)
        k = len(self.intensity_y)
        return [
            probs[..., start + i * k : start + (i + 1) * k, :]
            for i in range(len(self.intensity_sets))
        ]


# name -> the kind of training run it needs (swag.bench._train.KINDS), in report order
METHODS: dict[str, Kind] = {
    "SGD": "sgd",
    "SWA": "swag",
    "SWAG-Diag": "swag",
    "SWAG": "swag",
    "SWAG (fitted scale)": "swag",
    "MultiSWAG": "swag",
    "MultiSWAG (fitted scale)": "swag",
    "Deep ensemble": "sgd",
    "SGD + temp. scaling": "sgd",
    "MC dropout": "sgd",
    "FGE": "fge",
    "SWA (cyclical)": "fge",
    "SAM": "sam",
    "SWAG (SAM)": "swag_sam",
    "Laplace (last layer)": "sgd",
    "IVON": "ivon",
}
# the rows of the FGE and SAM runs (one run each, 5 SGD runs' worth of training in all):
# BenchConfig.fge_sam / --fge-sam switch them on
FGE_SAM: tuple[str, ...] = tuple(m for m, k in METHODS.items() if k in ("fge", "sam", "swag_sam"))
# the baselines users pick instead of SWAG, from the optional extra `baselines`:
# BenchConfig.baselines / --no-baselines switch them off; row -> the module it imports
BASELINES: dict[str, str] = {"Laplace (last layer)": "laplace", "IVON": "ivon"}
INSTALL_BASELINES = "pip install 'swag-toolkit[baselines]' (or scripts/setup.sh)"


def missing_baselines(methods: Sequence[str]) -> list[str]:
    """The rows of :data:`BASELINES` in ``methods`` whose package is not installed."""
    return [m for m in methods if m in BASELINES and find_spec(BASELINES[m]) is None]


@dataclass
class Predictions:
    """Per-sample probabilities ``(S, N_total, C)`` and seconds per method, fitted knobs, and
    ``logits``: per method whose logits were seen, ``(N_total, 2)`` float64 energy and max logit
    (:func:`swag.metrics.energy`, :func:`swag.metrics.max_logit` over the samples)."""

    probs: dict[str, Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    fitted: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    logits: dict[str, Tensor] = field(default_factory=dict)


def loader(x: Tensor, batch_size: int) -> list[Tensor]:
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def method_predictions(
    cfg: BenchConfig,
    runs: dict[Kind, list[Run]],
    data: EvalData,
    *,
    methods: Sequence[str],
    seed: int,
    device: torch.device,
    progress: Progress,
) -> Predictions:
    """Every method in ``methods`` (names of :data:`METHODS`), predicted and timed.

    ``runs`` holds the trained runs of each kind the methods need (:data:`METHODS`).
    """
    sgd, swag = runs.get("sgd", []), runs.get("swag", [])
    model = next(r for kind in runs.values() for r in kind).model
    inputs = loader(data.stacked, cfg.eval_batch_size)
    bn = loader(data.bn_x, cfg.batch_size)
    options = PredictOptions(
        bn=BNRefresh(bn, cfg.bn_batches), device=device, progress=progress.bars
    )  # every prediction and scale fit of the bench evaluates networks the same way
    posteriors: list[Posterior] = [r.collector.posterior() for r in swag if r.collector]
    points: list[Posterior] = [PointPosterior.from_model(r.model) for r in sgd]
    out = Predictions()
    n = len(data.stacked)
    captured: list[Tensor] = []  # the logits of every batch of the method being predicted

    def keep(z: Tensor) -> Tensor:
        captured.append(z.detach().float().cpu())
        return z

    def point(logits: Tensor) -> Tensor:
        keep(logits)
        return logits.softmax(-1).unsqueeze(0)

    def bma(
        post: Posterior,
        samples: int,
        scale: float = 0.0,
        *,
        mc_dropout: bool = False,
    ) -> Tensor:
        probs: Tensor = predict(
            post, model, inputs, num_samples=samples, scale=scale,
            generator=torch.Generator().manual_seed(seed), head=Classification(output_fn=keep),
            options=dataclasses.replace(options, mc_dropout=mc_dropout, reduce=False),
        )  # fmt: skip
        return probs.cpu()

    def fitted(key: str, post: Posterior) -> float:
        if key not in out.fitted:
            x, y = data.val_x[: cfg.fit_val_size], data.val_y[: cfg.fit_val_size]
            val = list(
                zip(loader(x, cfg.eval_batch_size), loader(y, cfg.eval_batch_size), strict=True)
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)  # an edge of the bounds
                warnings.simplefilter("always", UserWarning)  # draws uneven over the members
                # a multiple of a mixture's members, so each is weighed equally
                k = len(post.components) if isinstance(post, MultiSWAG) else 1
                out.fitted[key] = fit_scale(
                    post, model, val, num_samples=-(-cfg.fit_samples // k) * k, options=options,
                    tol=cfg.fit_tol, generator=torch.Generator().manual_seed(seed + 1),
                )  # fmt: skip
            out.notes += [f"{key}: {w.message}" for w in caught]
        return out.fitted[key]

    def temperature_scaled() -> Tensor:
        val_logits = _logits(model, loader(data.val_x, cfg.eval_batch_size), device)
        out.fitted["temperature"] = fit_temperature(val_logits, data.val_y)
        logits = _logits(model, inputs, device)
        return point(apply_temperature(logits, out.fitted["temperature"]))

    def laplace() -> Tensor:
        with warnings.catch_warnings():  # asdl, which laplace-torch imports, still jit-scripts
            warnings.filterwarnings("ignore", "`torch.jit.script`", DeprecationWarning)
            from laplace import Laplace

        train = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(data.train_x, data.train_y), batch_size=cfg.batch_size
        )
        # a DataLoader draws its base seed from the global RNG: keep the caller's state
        with torch.random.fork_rng(devices=[]):
            la = Laplace(
                model.cpu(), "classification", subset_of_weights="last_layer",
                hessian_structure="kron",
            )  # fmt: skip
            la.fit(train)
            with warnings.catch_warnings():  # a reminder to predict with the same link: we do
                warnings.filterwarnings("ignore", message="By default `link_approx`")
                la.optimize_prior_precision(method="marglik", pred_type="glm", link_approx="probit")
            out.fitted["Laplace prior precision"] = float(la.prior_precision.mean())
            # the GLM predictive returns one (B, C) tensor (a tuple only for joint predictives)
            probs = [
                cast(Tensor, la(x, pred_type="glm", link_approx="probit")).detach() for x in inputs
            ]
        model.to(device)
        return torch.cat(probs).unsqueeze(0)

    def ivon_bma() -> Tensor:
        run = _need(next((r for r in runs.get("ivon", [])), None), "IVON")
        samples = []
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            run.model.eval()
            for _ in range(s):
                with run.ivon.sampled_params():
                    z = torch.cat([run.model(x.to(device)).cpu() for x in inputs])
                keep(z)
                samples.append(z.softmax(-1))
        return torch.stack(samples)

    fge = next((r.snapshots for r in runs.get("fge", []) if r.snapshots is not None), None)
    sam = next((r.model for r in runs.get("sam", [])), None)
    swag_sam = next(
        (r.collector.posterior() for r in runs.get("swag_sam", []) if r.collector), None
    )
    s, m = cfg.num_samples, len(posteriors)
    swag0 = posteriors[0] if posteriors else None
    multi = MultiSWAG(posteriors) if posteriors else None
    table: dict[str, tuple[str, Callable[[], Tensor]]] = {
        "SGD": ("1 network", lambda: point(_logits(model, inputs, device))),
        "SWA": ("the SWAG mean, BN refreshed", lambda: bma(_mean(swag0), 1)),
        "SWAG-Diag": (
            f"{s} samples at scale {cfg.diag_scale:g}",
            lambda: bma(_need(swag0).diagonal(), s, cfg.diag_scale),
        ),
        "SWAG": (f"{s} samples at scale {cfg.scale:g}", lambda: bma(_need(swag0), s, cfg.scale)),
        "SWAG (fitted scale)": (
            f"scale fitted on {cfg.fit_val_size} validation images, {s} samples",
            lambda: bma(_need(swag0), s, fitted("SWAG scale", _need(swag0))),
        ),
        "MultiSWAG": (
            f"{m} members, {s} samples at scale {cfg.scale:g}",
            lambda: bma(_need(multi), s, cfg.scale),
        ),
        "MultiSWAG (fitted scale)": (
            f"{m} members, one shared scale fitted on validation images, {s} samples",
            lambda: bma(_need(multi), s, fitted("MultiSWAG scale", _need(multi))),
        ),
        "Deep ensemble": (f"{len(points)} networks", lambda: bma(MultiSWAG(points), len(points))),
        "SGD + temp. scaling": ("temperature fitted on validation images", temperature_scaled),
        "MC dropout": (f"{s} dropout passes", lambda: bma(points[0], s, mc_dropout=True)),
        "FGE": (
            f"{cfg.fge_cycles} cycle-end snapshots of one cyclical run",
            lambda: bma(_need(fge, "FGE").posterior(), cfg.fge_cycles),
        ),
        "SWA (cyclical)": (
            "the average of the same snapshots, BN refreshed",
            lambda: bma(_need(fge, "FGE").swa(), 1),
        ),
        "SAM": (
            f"1 network trained with SAM (rho {cfg.sam_rho:g})",
            lambda: point(_logits(_need(sam, "SAM"), inputs, device)),
        ),
        "SWAG (SAM)": (
            f"SWAG of a SAM run, {s} samples at scale {cfg.scale:g}",
            lambda: bma(_need(swag_sam, "SWAG (SAM)"), s, cfg.scale),
        ),
        "Laplace (last layer)": (
            "laplace-torch on the SGD network: last-layer KFAC, GLM predictive with the probit "
            "approximation, prior precision from the marginal likelihood",
            laplace,
        ),
        "IVON": (f"{s} samples of an IVON run (the SGD budget)", ivon_bma),
    }
    for name in methods:
        what, fn = table[name]
        progress.note(f"predict {name}: {what}, {n} images")
        start = time.perf_counter()
        captured.clear()
        out.probs[name] = fn()
        out.seconds[name] = time.perf_counter() - start
        shape = out.probs[name].shape
        logits = torch.cat(captured) if captured else None
        # energy and max logit need the logits; keep them only when they are the probabilities'
        if (
            logits is not None
            and logits.numel() == out.probs[name].numel()
            and torch.allclose(logits.view(shape).softmax(-1), out.probs[name].float(), atol=1e-4)
        ):
            z = logits.view(shape)
            out.logits[name] = torch.stack([metrics.energy(z), metrics.max_logit(z)], dim=1)
        else:
            out.notes.append(
                f"{name}: no logits kept; energy and max-logit OOD scores are left out (null, –)"
            )
    return out


def _need(post: T | None, what: str = "SWAG") -> T:
    if post is None:
        raise ValueError(f"this method needs {what} training runs, and none were trained")
    return post


def _mean(post: Posterior | None) -> Posterior:
    """The SWA solution of a SWAG posterior, as a point posterior."""
    p = _need(post)
    return PointPosterior(p.mean, p.layout)


@torch.no_grad()
def _logits(model: nn.Module, inputs: list[Tensor], device: torch.device) -> Tensor:
    """The model's logits in eval mode, with the BatchNorm statistics it was trained with."""
    model.eval()
    return torch.cat([model(x.to(device)).cpu() for x in inputs])


# OOD scores in report order (higher = more OOD); NaN where a method lacks what one needs
OOD_SCORES: tuple[str, ...] = ("entropy", "mi", "msp", "expected_entropy", "energy", "max_logit")
SELECTIVE_COVERAGES: tuple[float, ...] = (0.5, 0.8, 0.9)
CONFORMAL_METHODS: tuple[str, ...] = ("lac", "aps", "raps")
CONFORMAL_ALPHA = 0.1


def score(
    per_sample: Tensor, data: EvalData, logits: Tensor | None = None, *, seed: int = 0
) -> dict[str, float]:
    """Test metrics, shifted-test metrics, selective prediction, OOD detection (test vs ood) and
    split conformal sets for one method.

    OOD scores (``docs/metrics.md``): predictive entropy of the BMA; mutual information and
    expected entropy with 2+ samples; negated maximum softmax probability; with ``logits``
    ``(N_total, 2)`` (energy, max logit; :class:`Predictions`), the mean per-sample energy and
    the negated mean maximum logit. Scores a
    method lacks are NaN. Conformal: the test set split in two halves by a seeded permutation,
    calibrated on one, coverage and mean set size on the other.
    """
    probs = per_sample.mean(0)
    test, ood, shift = data.split(probs)
    out = metrics.summary(test, data.test_y)
    out["classwise_ece"] = metrics.classwise_ece(test, data.test_y)
    out["aurc"] = metrics.aurc(test, data.test_y)
    out["augrc"] = metrics.augrc(test, data.test_y)
    for cov, acc in metrics.selective_accuracy(test, data.test_y, SELECTIVE_COVERAGES).items():
        out[f"sel_acc_{round(100 * cov)}"] = acc
    out |= {f"shift_{k}": v for k, v in metrics.summary(shift, data.shift_y).items()}
    test_s, ood_s, _ = data.split(per_sample)
    scores = {
        "entropy": (metrics.predictive_entropy(test), metrics.predictive_entropy(ood)),
        "msp": (-metrics.max_probability(test), -metrics.max_probability(ood)),
    }
    if per_sample.shape[0] > 1:
        scores["mi"] = (metrics.mutual_information(test_s), metrics.mutual_information(ood_s))
        scores["expected_entropy"] = (
            metrics.expected_entropy(test_s),
            metrics.expected_entropy(ood_s),
        )
    if logits is not None:
        z_test, z_ood, _ = data.split(logits)
        scores["energy"] = (z_test[:, 0], z_ood[:, 0])
        scores["max_logit"] = (-z_test[:, 1], -z_ood[:, 1])
    for name in OOD_SCORES:
        pair = scores.get(name)
        summary = (
            None if pair is None else metrics.ood_summary(scores_in=pair[0], scores_out=pair[1])
        )
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            out[f"ood_{metric}_{name}"] = float("nan") if summary is None else summary[metric]
    return out | _conformal(test, data.test_y, seed)


def _conformal(probs: Tensor, targets: Tensor, seed: int) -> dict[str, float]:
    """Coverage and mean set size of each split conformal method, half calibration half test."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(targets), generator=g)
    cal, test = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    out = {}
    for method in CONFORMAL_METHODS:
        cp = SplitConformal(method, alpha=CONFORMAL_ALPHA, randomized=method == "raps")
        cp.fit(probs[cal], targets[cal], generator=g)
        sets = cp.predict_sets(probs[test], generator=g)
        covered = sets[torch.arange(len(test)), targets[test]]
        out[f"conformal_coverage_{method}"] = covered.double().mean().item()
        out[f"conformal_size_{method}"] = sets.sum(1).double().mean().item()
    return out


def score_intensities(per_sample: Tensor, data: EvalData) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracy, NLL and ECE on each shift-intensity set: ``{corruption: {level: metrics}}``,
    plus ``"mean"``: the mean over the corruptions (not the rotations) per intensity 1..5."""
    probs = per_sample.mean(0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (name, level), block in zip(data.intensity_sets, data.intensity_blocks(probs), strict=True):
        s = metrics.summary(block, data.intensity_y)
        out.setdefault(name, {})[f"{level:g}"] = {k: s[k] for k in ("accuracy", "nll", "ece")}
    corruptions = [n for n in out if n != "rotate"]
    if corruptions:
        levels = list(out[corruptions[0]])
        out["mean"] = {
            lv: {
                k: sum(out[n][lv][k] for n in corruptions) / len(corruptions)
                for k in ("accuracy", "nll", "ece")
            }
            for lv in levels
        }
    return out
