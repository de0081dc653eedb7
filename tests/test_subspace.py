"""Subspaces, ESS, VI and SubspacePosterior against independent references."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import swag
from swag.subspace import (
    Subspace,
    SubspaceLikelihood,
    SubspacePosterior,
    elliptical_slice,
    fit_vi,
    gaussian_kl,
)
from tests.test_guarantee_misuse_analysis import ESS_POST, LAYOUT, MODEL, SUB, VI_POST, X, Y


def collected(seed: int = 0, k: int = 6, steps: int = 9) -> tuple[nn.Module, swag.Collector]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    collector = swag.Collector(model, max_rank=k)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(steps):
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            collector.collect()
    return model, collector


# -- subspaces ------------------------------------------------------------------------------


def test_pca_matches_numpy_svd_of_the_deviations() -> None:
    _, collector = collected()
    post = collector.posterior()
    sub = Subspace.pca(collector, rank=4)
    d = post.deviations.double().numpy() / math.sqrt(post.rank - 1)
    _, s, vt = np.linalg.svd(d, full_matrices=False)
    basis = sub.basis.double().numpy()
    assert sub.shift.equal(post.mean) and sub.kind == "pca"
    for j in range(4):
        # the sign of a singular vector is arbitrary: compare up to sign (float32 basis: 1e-5)
        sign = np.sign(basis[j] @ vt[j])
        np.testing.assert_allclose(basis[j], sign * s[j] * vt[j], atol=1e-5 * s[0])
        assert abs(basis[j]).argmax() == np.argmax(basis[j])  # largest entry positive
    # with every direction, BᵀB is the low-rank SWAG covariance D̂ᵀD̂/(K−1)
    full = Subspace.pca(post, rank=post.rank).basis.double().numpy()
    np.testing.assert_allclose(full.T @ full, d.T @ d, atol=1e-6 * (s[0] ** 2))


def test_pca_and_random_validate_their_arguments() -> None:
    model = nn.Linear(2, 1)
    one = swag.Collector(model, max_rank=3)
    one.collect()
    with pytest.raises(ValueError, match="at least 2 deviations"):
        Subspace.pca(one, rank=1)
    _, collector = collected(k=4)
    with pytest.raises(ValueError, match=r"rank must be an int in \[1, 4\]"):
        Subspace.pca(collector, rank=5)
    with pytest.raises(ValueError, match="pass norm="):
        Subspace.random(one, rank=2)
    with pytest.raises(TypeError, match=r"Collector or swag\.SWAGPosterior"):
        Subspace.pca(model, rank=1)  # type: ignore[arg-type]


def test_random_subspace_is_seeded_and_of_pca_scale() -> None:
    _, collector = collected()
    a = Subspace.random(collector, 3, generator=torch.Generator().manual_seed(5))
    b = Subspace.random(collector, 3, generator=torch.Generator().manual_seed(5))
    pca = Subspace.pca(collector, 3)
    assert a.basis.equal(b.basis) and a.kind == "random"
    # equal lengths, and the same total prior variance tr(BBᵀ) as the PCA basis of that rank
    norms = a.basis.double().norm(dim=1)
    torch.testing.assert_close(norms, norms.mean().expand(3), rtol=1e-6, atol=0)
    torch.testing.assert_close(
        a.basis.double().square().sum(), pca.basis.double().square().sum(), rtol=1e-5, atol=0
    )
    fixed = Subspace.random(collector, 2, norm=2.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fixed.basis.double().norm(dim=1), torch.full((2,), 2.0).double())


def test_theta_and_project_are_inverse_on_the_subspace() -> None:
    _, collector = collected()
    sub = Subspace.pca(collector, 3)
    z = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, 0.1]])
    torch.testing.assert_close(sub.project(sub.theta(z)), z, atol=1e-4, rtol=1e-4)


# -- a linear-Gaussian model: the exact posterior over z is Gaussian in closed form ----------


class LinearGaussian:
    """y = Xw + ε, ε ~ N(0, σ²); w = θ̂ + zB on a 2-dim subspace of R^4; prior N(0, σ_p² I)."""

    def __init__(self, temperature: float = 2.0, prior_std: float = 1.5) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 4, generator=g, dtype=torch.float64)
        w_true = torch.tensor([1.0, -0.5, 0.3, 0.8], dtype=torch.float64)
        self.noise = 0.5
        self.y = self.x @ w_true + self.noise * torch.randn(40, generator=g, dtype=torch.float64)
        self.model = nn.Linear(4, 1, bias=False).double()
        layout = swag.ParamLayout.from_model(self.model)
        shift = torch.tensor([0.5, 0.0, 0.0, 0.5], dtype=torch.float64)
        basis = torch.tensor([[0.3, -0.2, 0.1, 0.0], [0.1, 0.1, 0.0, 0.3]], dtype=torch.float64)
        self.sub = Subspace(shift, basis, layout)
        self.temperature, self.prior_std = temperature, prior_std
        # exact tempered posterior: precision Λ = AᵀA/(σ²T) + I/σ_p², mean Λ⁻¹Aᵀr/(σ²T)
        a = (self.x @ basis.T).numpy()
        r = (self.y - self.x @ shift).numpy()
        scale = 1.0 / (self.noise**2 * temperature)
        precision = scale * a.T @ a + np.eye(2) / prior_std**2
        self.cov = np.linalg.inv(precision)
        self.mean = self.cov @ (scale * a.T @ r)
        self.precision = precision

    def likelihood(self, batch_size: int = 40) -> SubspaceLikelihood:
        loader = [
            (self.x[i : i + batch_size], self.y[i : i + batch_size])
            for i in range(0, 40, batch_size)
        ]
        return SubspaceLikelihood(
            self.model, self.sub, loader, likelihood="gaussian", noise_var=self.noise**2
        )


def test_likelihood_is_the_gaussian_log_density() -> None:
    lg = LinearGaussian()
    z = torch.tensor([0.3, -0.7], dtype=torch.float64)
    w = lg.sub.theta(z)
    resid = (lg.y - lg.x @ w).numpy()
    expected = -0.5 * np.sum(resid**2 / lg.noise**2 + np.log(2 * np.pi * lg.noise**2))
    assert float(lg.likelihood(batch_size=16)(z)) == pytest.approx(expected, rel=1e-12)


def batch_means(samples: np.ndarray, batches: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``samples`` ``(S, d)`` and its batch-means standard error (autocorrelation-safe)."""
    parts = np.array_split(samples, batches)
    means = np.stack([p.mean(0) for p in parts])
    return samples.mean(0), means.std(0, ddof=1) / math.sqrt(batches)


def test_ess_recovers_the_exact_posterior_mean_and_covariance() -> None:
    lg = LinearGaussian()
    result = elliptical_slice(
        lg.likelihood(),
        dim=2,
        num_samples=3000,
        burn_in=100,
        prior_std=lg.prior_std,
        temperature=lg.temperature,
        generator=torch.Generator().manual_seed(1),
    )
    z = result.samples.numpy()
    assert z.shape == (3000, 2) and result.evaluations_per_sample > 1
    # Monte-Carlo error from 20 batch means of 150 correlated states each; 5 SE bounds every one
    # of the 2 + 3 compared quantities with a false-alarm rate below 1e-5 under normality.
    mean, se = batch_means(z)
    assert np.all(np.abs(mean - lg.mean) < 5 * se), (mean, lg.mean, se)
    centred = z - lg.mean
    products = np.stack([centred[:, 0] ** 2, centred[:, 1] ** 2, centred[:, 0] * centred[:, 1]], 1)
    cov_hat, cov_se = batch_means(products)
    exact = np.array([lg.cov[0, 0], lg.cov[1, 1], lg.cov[0, 1]])
    assert np.all(np.abs(cov_hat - exact) < 5 * cov_se), (cov_hat, exact, cov_se)
    # the test has power: the posterior is much narrower than the prior and off-centre
    assert lg.cov[0, 0] < 0.1 * lg.prior_std**2 and np.abs(lg.mean).max() > 10 * math.sqrt(
        lg.cov.diagonal().max()
    ) / math.sqrt(3000)


@pytest.mark.parametrize("full", [True, False])
def test_vi_finds_the_exact_gaussian_or_its_mean_field_optimum(full: bool) -> None:
    lg = LinearGaussian()
    lik = lg.likelihood()
    result = fit_vi(
        lik,
        prior_std=lg.prior_std,
        temperature=lg.temperature,
        full=full,
        epochs=600,
        lr=0.02,
        mc_samples=8,
        generator=torch.Generator().manual_seed(2),
    )
    cov = (result.scale_tril @ result.scale_tril.T).numpy()
    # The exact posterior is Gaussian, so full-covariance VI's optimum is the posterior itself;
    # the mean-field optimum has the exact mean and variances 1/Λ_ii (Bishop, PRML §10.1.2).
    target = lg.cov if full else np.diag(1.0 / np.diag(lg.precision))
    sd = np.sqrt(np.diag(lg.cov))
    # What is left is the optimiser's: 8-draw gradients with a cosine-annealed Adam rate. Over
    # 3 seeds × 2 settings we measured errors ≤ 0.05 posterior sd on the mean and ≤ 7% of the
    # smallest variance on the covariance; allow twice that.
    np.testing.assert_allclose(result.loc.numpy(), lg.mean, atol=0.1 * sd.min())
    np.testing.assert_allclose(cov, target, atol=0.12 * np.diag(target).min())
    assert result.elbo.shape == (600,)
    assert lik.calls == 600 * 8


def test_samplers_validate_arguments() -> None:
    lg = LinearGaussian()
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        elliptical_slice(lg.likelihood(), 2, 5, temperature=0.0)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        elliptical_slice(lg.likelihood(), 2, 0)
    with pytest.raises(ValueError, match="prior_std must be finite and > 0"):
        fit_vi(lg.likelihood(), prior_std=-1.0)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        SubspaceLikelihood(lg.model, lg.sub, [(lg.x, lg.y)], noise_var=1.0)


def test_ess_is_reproducible_with_a_generator() -> None:
    lg = LinearGaussian()
    runs = [
        elliptical_slice(lg.likelihood(), 2, 20, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert runs[0].samples.equal(runs[1].samples)


# -- the posterior ---------------------------------------------------------------------------


def classification_posteriors() -> tuple[nn.Module, torch.Tensor, list[SubspacePosterior]]:
    model, collector = collected()
    sub = Subspace.pca(collector, 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    lik = SubspaceLikelihood(model, sub, [(x[:15], y[:15]), (x[15:], y[15:])])
    chain = elliptical_slice(lik, 2, 6, generator=g)
    vi = fit_vi(lik, epochs=3, full=True, generator=g)
    posts = [
        SubspacePosterior.from_ess(sub, chain, temperature=1.0, prior_std=1.0),
        SubspacePosterior.from_vi(sub, vi, temperature=1.0, prior_std=1.0),
    ]
    return model, x, posts


def test_predict_on_a_subspace_posterior_averages_chain_states() -> None:
    model, x, (ess_post, vi_post) = classification_posteriors()
    assert isinstance(ess_post, swag.Posterior)
    per_sample = swag.predict(
        ess_post,
        model,
        [x],
        num_samples=8,
        generator=torch.Generator(),
        options=swag.PredictOptions(reduce=False),
    )
    assert per_sample.shape == (8, 30, 3)
    # every sampled network is one of the chain's states, and the BMA is their average
    work = ess_post.to_model(model)
    state_probs = []
    for z in ess_post.chain:  # type: ignore[union-attr]
        ess_post.apply_(work, ess_post.subspace.theta(z))
        state_probs.append(torch.softmax(work(x), -1).detach())
    stacked = torch.stack(state_probs)
    for probs in per_sample:
        assert min(float((probs - s).abs().max()) for s in stacked) < 1e-6
    mean = swag.predict(ess_post, model, [x], num_samples=8, generator=torch.Generator())
    torch.testing.assert_close(mean, per_sample.mean(0))
    # the VI posterior samples loc + Lε; with MultiSWAG the two mix
    mix = swag.MultiSWAG([ess_post, vi_post])
    assert mix.sample((5,), generator=torch.Generator().manual_seed(0)).shape == (5, 43)


def test_sample_shapes_means_and_chain_stratification() -> None:
    _, _, (ess_post, vi_post) = classification_posteriors()
    chain = ess_post.chain
    assert chain is not None
    z = ess_post.sample_z((6,), generator=torch.Generator().manual_seed(0))
    # six draws from a six-state chain use every state once
    assert sorted(map(tuple, z.tolist())) == sorted(map(tuple, chain.tolist()))
    assert ess_post.sample((2, 3)).shape == (2, 3, 43)
    torch.testing.assert_close(ess_post.mean, ess_post.subspace.theta(chain.mean(0)))
    draws = vi_post.sample_z((20000,), generator=torch.Generator().manual_seed(1)).double()
    assert vi_post.loc is not None and vi_post.scale_tril is not None
    cov = (vi_post.scale_tril @ vi_post.scale_tril.T).double()
    # 20000 draws: sd of the sample mean is sd/141, of a covariance entry about var·√2/141
    torch.testing.assert_close(draws.mean(0), vi_post.loc.double(), atol=5 * 0.01, rtol=0)
    torch.testing.assert_close(draws.T.cov(), cov, atol=0.05 * float(cov.diagonal().max()), rtol=0)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        vi_post.sample(scale=-1.0)


def test_save_load_round_trip_and_damaged_files(tmp_path: Path) -> None:
    _, _, posts = classification_posteriors()
    for post in posts:
        path = tmp_path / f"{post.method}.safetensors"
        post.save(path)
        back = SubspacePosterior.load(path)
        assert back.method == post.method and back.layout == post.layout
        assert back.subspace.basis.equal(post.subspace.basis)
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert back.sample((3,), generator=g1).equal(post.sample((3,), generator=g2))
    blob = (tmp_path / "ess.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="not a readable swag file"):
        SubspacePosterior.load(tmp_path / "cut.safetensors")
    _, collector = collected()
    collector.posterior().save(tmp_path / "swag.safetensors")
    with pytest.raises(ValueError, match="not a 'subspace_posterior'"):
        SubspacePosterior.load(tmp_path / "swag.safetensors")
    # a file whose Cholesky factor is not lower triangular is refused with the reason
    vi = posts[1]
    assert vi.scale_tril is not None
    swag.persistence._io.save_file(
        tmp_path / "bad.safetensors",
        "subspace_posterior",
        {
            "shift": vi.subspace.shift,
            "basis": vi.subspace.basis,
            "loc": vi.loc,  # type: ignore[dict-item]
            "scale_tril": vi.scale_tril.T.contiguous() + 1.0,
        },
        {
            "layout": vi.layout.to_json(),
            "subspace_kind": "pca",
            "method": "vi",
            "temperature": "1.0",
            "prior_std": "1.0",
        },
    )
    with pytest.raises(ValueError, match=r"bad\.safetensors: scale_tril must be lower triangular"):
        SubspacePosterior.load(tmp_path / "bad.safetensors")


def test_posterior_validates_its_parts() -> None:
    _, _, (ess_post, _) = classification_posteriors()
    sub = ess_post.subspace
    with pytest.raises(ValueError, match="either chain="):
        SubspacePosterior(sub)
    with pytest.raises(ValueError, match=r"chain must have shape \(S >= 1, 2\)"):
        SubspacePosterior(sub, chain=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="temperature must be finite"):
        SubspacePosterior(sub, chain=torch.zeros(3, 2), temperature=0.0)


def test_gaussian_kl_matches_torch() -> None:
    loc, tril = (
        torch.tensor([0.3, -0.2], dtype=torch.float64),
        torch.tensor([[0.5, 0.0], [0.1, 0.7]], dtype=torch.float64),
    )
    q = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
    p = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), 4 * torch.eye(2, dtype=torch.float64)
    )
    torch.testing.assert_close(gaussian_kl(loc, tril, 2.0), torch.distributions.kl_divergence(q, p))


def test_vi_with_a_nan_elbo_raises_instead_of_returning_nan() -> None:
    x = X.clone()
    x[0, 0] = math.nan
    lik = SubspaceLikelihood(MODEL, SUB, [(x, Y)])
    with pytest.raises(ValueError, match="the ELBO is nan at step 1"):
        fit_vi(lik, epochs=2)


@pytest.mark.parametrize(
    ("value", "says"), [(math.inf, r"\+inf"), (-math.inf, "-inf"), (math.nan, "nan")]
)
def test_ess_names_a_non_finite_initial_log_likelihood(value: float, says: str) -> None:
    with pytest.raises(ValueError, match=f"log_likelihood at the initial state .* is {says}"):
        elliptical_slice(lambda z: torch.tensor(value), 2, 3)


def test_ess_refuses_plus_inf_during_the_chain() -> None:
    def log_lik(z: Tensor) -> Tensor:
        return torch.tensor(math.inf if float(z.norm()) > 0 else 0.0)

    with pytest.raises(ValueError, match=r"log_likelihood returned \+inf"):
        elliptical_slice(log_lik, 2, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shape", [0, 3, (2, 2), (0, 5), np.int64(2), torch.Size([1, 2])])
def test_valid_sample_shapes_still_work(shape: Any) -> None:
    size = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    for post in (ESS_POST, VI_POST):
        assert post.sample(shape).shape == (*size, LAYOUT.size)
