"""The one evaluation loop: networks written into a working copy of the model, BatchNorm
refreshed, batches evaluated; shared by :func:`swag.predict`, :func:`swag.fit_scale`, the
landscape scans and the benchmark."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from swag.core._checks import (
    check_generator,
    check_loader,
    check_scale,
)
from swag.core._gaussian import check_head
from swag.core._params import working_copy
from swag.core.multiswag import MultiSWAG, iter_samples
from swag.core.point import PointPosterior
from swag.core.posterior import Posterior
from swag.evaluation._batches import call_model, move_to
from swag.evaluation._dropout import mc_dropout_modules
from swag.evaluation._options import (
    BNRefresh,
    Classification,
    GaussianRegression,
    Head,
    OutputFn,
    PredictOptions,
)
from swag.evaluation._reduce import finite, reduce_gaussian, reduce_probs
from swag.evaluation.bn import default_input_fn, has_batchnorm, update_bn

_SHUFFLING = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


def check_call(
    posterior: object,
    model: object,
    loader: object,
    scale: object,
    generator: object,
    head: object,
    options: object,
    loader_name: str = "loader",
) -> tuple[Head, PredictOptions, float | None]:
    """Validates predict's arguments (each error names its argument).

    Returns the head and options with their defaults filled in, and the scale.
    """
    if not isinstance(posterior, Posterior):
        raise TypeError(
            "posterior must be a Posterior (SWAGPosterior, PointPosterior, MultiSWAG, ...), got "
            f"{type(posterior).__name__}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_loader(loader, loader_name)
    check_generator(generator)
    if head is None:
        head = Classification()
    if not isinstance(head, (Classification, GaussianRegression)):
        raise TypeError(
            "head must be swag.Classification(...) or swag.GaussianRegression(...), got "
            f"{type(head).__name__}"
        )
    if options is None:
        options = PredictOptions()
    if not isinstance(options, PredictOptions):
        raise TypeError(
            f"options must be a swag.PredictOptions(...), got {type(options).__name__}; e.g. "
            "options=swag.PredictOptions(bn=swag.BNRefresh(train_loader))"
        )
    return head, options, None if scale is None else check_scale(scale, False)


def run(
    posterior: Posterior,
    model: nn.Module,
    loader: Iterable[Any],
    num_samples: int,
    scale: float | None,
    generator: torch.Generator | None,
    head: Head,
    options: PredictOptions,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`predict` on checked arguments: the one evaluation loop over sampled networks."""
    _check_fixed_order(loader)
    evaluator = Evaluator(model, options)
    gaussian = isinstance(head, GaussianRegression)
    noise_var = head.noise_var if isinstance(head, GaussianRegression) else None

    def passes() -> Iterator[list[Any]]:
        """Per sample: the (``output_fn``-mapped) outputs of every batch of ``loader``."""
        thetas = iter_samples(posterior, num_samples, scale=scale, generator=generator)
        progress_bar = tqdm(thetas, total=num_samples, desc="predict", disable=not options.progress)
        for passes_done, theta in enumerate(progress_bar):
            evaluator.load(functools.partial(posterior.apply_, theta=theta))
            outs = []
            for _, out in evaluator.outputs(loader, head.output_fn):
                if gaussian and noise_var is None:
                    check_head(out)
                outs.append(out)
            if not outs:
                raise ValueError(
                    "the evaluation loader yielded no batch"
                    + (
                        " on its second pass: it is exhausted after one. Pass something "
                        "re-iterable (a list or a DataLoader), not a generator or iterator"
                        if passes_done
                        else ""
                    )
                )
            yield outs

    loaders = [loader] if evaluator.refresh is None else [loader, evaluator.refresh.loader]
    with torch.no_grad(), isolated_rng(generator, loaders):
        if not gaussian:
            return finite(reduce_probs(passes(), options.reduce))
        mean, var = reduce_gaussian(passes(), options.reduce, noise_var)
        return finite(mean), finite(var)


class Evaluator:
    """One working copy of a model, evaluated network by network as ``options`` say.

    The loop shared by :func:`predict` (and so ``fit_scale`` and the benchmark) and the
    landscape scans: :meth:`load` writes a network's weights and refreshes BatchNorm,
    :meth:`outputs` walks a loader in eval mode (with MC dropout live if asked).
    """

    def __init__(self, model: nn.Module, options: PredictOptions) -> None:
        self.options = options
        self.work = working_copy(model)
        if options.device is not None:
            self.work.to(options.device)
        self.refresh = _bn_source(self.work, options.bn)
        self.live = mc_dropout_modules(self.work) if options.mc_dropout else []
        self.to_input = options.input_fn or default_input_fn

    def load(self, write: Callable[[nn.Module], object]) -> None:
        """Writes one network's weights with ``write(work)``, then refreshes BatchNorm."""
        write(self.work)
        if self.refresh is not None:
            update_bn(
                self.refresh.loader,
                self.work,
                num_batches=self.refresh.batches,
                input_fn=self.options.input_fn,
                device=self.options.device,
            )
        self.work.eval()
        for m in self.live:
            m.training = True

    def outputs(
        self, loader: Iterable[Any], output_fn: OutputFn | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """``(batch, output)`` per batch of ``loader``, the output mapped by ``output_fn``."""
        for batch in loader:
            out = call_model(self.work, move_to(self.to_input(batch), self.options.device))
            yield batch, out if output_fn is None else output_fn(out)


def default_num_samples(posterior: Posterior, mc_dropout: bool = False) -> int:
    """``predict``'s default S: 30 draws, or one per point when every draw would be the same.

    A :class:`~swag.PointPosterior` gives 1 and a mixture of only points (a deep ensemble, also
    nested) the smallest S whose stratified allocation weighs every member exactly as the
    mixture does (one per member for a flat ensemble), unless ``mc_dropout`` makes each pass
    random. For a stochastic :class:`~swag.MultiSWAG` the 30 is rounded up to a multiple of its
    members, so that each gets the same number of draws.
    """
    exact = None if mc_dropout else _exact_point_samples(posterior)
    if exact is not None:
        return exact
    members = len(posterior) if isinstance(posterior, MultiSWAG) else 1
    return members * math.ceil(30 / members)


def warn_uneven(posterior: Posterior, num_samples: int, *, stacklevel: int) -> None:
    """Warns when ``num_samples`` draws cannot weigh a MultiSWAG's members equally."""
    if not isinstance(posterior, MultiSWAG) or num_samples % len(posterior) == 0:
        return
    members = len(posterior)
    warnings.warn(
        f"num_samples={num_samples} is not a multiple of the MultiSWAG's {members} members: "
        f"{num_samples % members} of them, chosen at random, get one draw more, so the members "
        f"are weighed unequally; pass a multiple of {members}, e.g. "
        f"num_samples={members * math.ceil(num_samples / members)}",
        UserWarning,
        stacklevel=stacklevel,
    )


def _exact_point_samples(posterior: Posterior) -> int | None:
    """S for a point or a mixture of only points; None for anything stochastic."""
    if isinstance(posterior, PointPosterior):
        return 1
    if isinstance(posterior, MultiSWAG):
        sizes = [_exact_point_samples(c) for c in posterior.components]
        if all(n is not None for n in sizes):
            return len(sizes) * math.lcm(*(n for n in sizes if n is not None))
    return None


def _check_fixed_order(loader: Iterable[Any]) -> None:
    if not isinstance(loader, DataLoader):
        return
    samplers = (loader.sampler, getattr(loader.batch_sampler, "sampler", None))
    shuffling = [isinstance(s, _SHUFFLING) or getattr(s, "shuffle", False) for s in samplers]
    if any(shuffling):
        raise ValueError(
            "the evaluation loader shuffles (its sampler is random): every sampled network would "
            "see the examples in a different order, and the averaged predictions would not line "
            "up with the targets. Build it with shuffle=False (for a DistributedSampler: "
            "DistributedSampler(dataset, shuffle=False))"
        )


def _bn_source(model: nn.Module, bn: BNRefresh | Literal[False] | None) -> BNRefresh | None:
    """The BatchNorm refresh to run per network, or None when there is nothing to refresh."""
    if bn is False or not has_batchnorm(model):
        return None
    if bn is None:
        raise ValueError(
            "the model has BatchNorm (or InstanceNorm) layers that track running statistics, "
            "which must be recomputed for every sampled network: pass "
            "options=swag.PredictOptions(bn=swag.BNRefresh(train_loader)) (batches=... to use "
            "only the first batches), or PredictOptions(bn=False) to keep the model's current "
            "statistics (right only for the weights they were computed with)"
        )
    return bn


def _loader_generators(loaders: Iterable[Any]) -> list[torch.Generator]:
    """The generators of DataLoaders and their samplers among ``loaders``, each once."""
    found: list[torch.Generator] = []
    for loader in loaders:
        if not isinstance(loader, DataLoader):
            continue
        batch_sampler = loader.batch_sampler
        owners = (loader, loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None))
        for owner in owners:
            g = getattr(owner, "generator", None)
            if isinstance(g, torch.Generator) and all(g is not f for f in found):
                found.append(g)
    return found


@contextlib.contextmanager
def isolated_rng(generator: torch.Generator | None, loaders: Iterable[Any] = ()) -> Iterator[None]:
    """With a generator: a forked global RNG seeded from it, restored on exit.

    The loaders' own generators (:func:`_loader_generators`, except ``generator`` itself) are
    seeded from the forked RNG for the run and get their states back on exit.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**63 - 1, (), generator=generator, device=generator.device))
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    owned = [g for g in _loader_generators(loaders) if g is not generator]
    states = [g.get_state() for g in owned]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        for g in owned:
            g.manual_seed(int(torch.randint(2**63 - 1, ())))
        try:
            yield
        finally:
            for g, state in zip(owned, states, strict=True):
                g.set_state(state)
