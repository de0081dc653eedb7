"""The callbacks' ``average=`` (issue 21 item 6): EMA, power EMA and LAWA in Lightning and HF.

Each run records the parameters after every optimiser step; a plain :class:`swag.Collector`
with the same rule, fed the iterates the callback's schedule selects, is the reference (the
rule itself is tested against torch's ``AveragedModel`` and float64 recursions in
``test_averaging.py``). With gradient accumulation (k micro-batches per optimiser step) the
callback must collect once per optimiser step: ``k`` times fewer collects than batches, and
the same statistics as the reference over the optimiser steps' iterates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import swag
from swag.averaging import AveragingRule
from tests.callback_runs import (
    BATCH,
    X,
    assert_same_posterior,
    lightning_run,
    reference,
    transformers_run,
)
from tests.kinds import make_model

pytest.importorskip("lightning", reason="lightning is not installed")
pytest.importorskip("transformers", reason="transformers is not installed")

RULES: dict[str, AveragingRule] = {
    "EMA": swag.EMA(0.8),
    "EMA warmup": swag.EMA(0.9, warmup=True),
    "PowerEMA": swag.PowerEMA(sigma_rel=0.2),
    "LAWA": swag.LAWA(3),
}
RUNS = {"lightning": lightning_run, "hf": transformers_run}


def run_with(framework: str, rule: AveragingRule | None, accumulate: int) -> Any:
    if framework == "lightning":  # 4 epochs of 4 batches: 16 // k optimiser steps
        return lightning_run(epochs=4, accumulate=accumulate, average=rule)
    return transformers_run(steps=8, accumulate=accumulate, average=rule)  # 8 · k batches


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("framework", list(RUNS))
def test_averaged_posterior_and_model_equal_a_plain_collector(
    framework: str, rule: str, accumulate: int
) -> None:
    run = run_with(framework, RULES[rule], accumulate)
    cb = run.callback
    steps = [s for s, _ in run.iterates]
    assert steps == list(range(1, len(steps) + 1))  # one record per optimiser step
    batches = 16 if framework == "lightning" else 8 * accumulate
    assert len(steps) == batches // accumulate
    # once per optimiser step past the start: never per micro-batch
    assert cb.collector.n == len(steps) - run.start >= 3
    ref = reference(run, average=RULES[rule])
    assert ref.n == cb.collector.n
    assert_same_posterior(cb.posterior(), ref.posterior())
    flat = torch.cat([p.detach().reshape(-1) for p in cb.swa_model().parameters()])
    assert torch.equal(flat, ref.mean)
    # the rule did weight the iterates: not the equal average of the same iterates
    equal = reference(run)
    assert not torch.equal(ref.mean, equal.mean)


@pytest.mark.parametrize("framework", list(RUNS))
def test_collect_every_counts_optimiser_steps_under_accumulation(framework: str) -> None:
    kw: dict[str, Any] = {"accumulate": 2, "every": 2, "average": RULES["EMA"]}
    run = lightning_run(epochs=4, **kw) if framework == "lightning" else transformers_run(**kw)
    assert len(run.iterates) == 4 * len(X) // BATCH // 2 == 8  # optimiser steps
    ref = reference(run, every=2, average=RULES["EMA"])
    assert run.callback.collector.n == ref.n == (8 - run.start) // 2
    assert_same_posterior(run.callback.posterior(), ref.posterior())


@pytest.mark.parametrize("framework", list(RUNS))
def test_the_rules_state_is_saved_and_resumes_exactly(framework: str, tmp_path: Path) -> None:
    rule = RULES["LAWA"]
    cb = RUNS[framework](max_rank=2, average=rule).callback
    swag.save(cb, tmp_path / "cb.safetensors")
    state = swag.load(tmp_path / "cb.safetensors")
    assert isinstance(state, swag.integrations.CallbackState)
    window = state.collector["tensors"]["average.ring"]
    assert window.shape == (3, 43) and torch.equal(window, cb.collector.averaging.ring)
    assert_same_posterior(
        state.to_collector(make_model(), average=rule).posterior(), cb.posterior()
    )
    with pytest.raises(ValueError, match=r"collected with average=LAWA\(window=3\)"):
        RUNS[framework](max_rank=2, average=swag.EMA(0.5), state=state)


def test_an_hf_resume_with_a_rule_equals_uninterrupted(tmp_path: Path) -> None:
    rule = RULES["LAWA"]
    whole = transformers_run(steps=8, average=rule)
    transformers_run(steps=8, folder=tmp_path, stop=4, average=rule)
    resumed = transformers_run(steps=8, folder=tmp_path, resume=tmp_path / "checkpoint-4",
                               average=rule)  # fmt: skip
    assert_same_posterior(resumed.callback.posterior(), whole.callback.posterior())
    # the checkpoint's state holds the rule: resuming without it is refused by name
    with pytest.raises(ValueError, match="this callback has average=none"):
        transformers_run(steps=8, folder=tmp_path, resume=tmp_path / "checkpoint-4")


def test_a_lightning_resume_with_a_rule_equals_uninterrupted(tmp_path: Path) -> None:
    rule = RULES["EMA warmup"]
    whole = lightning_run(epochs=3, average=rule)
    lightning_run(epochs=3, root=tmp_path, stop=1, average=rule)
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    resumed = lightning_run(epochs=3, root=tmp_path, ckpt=ckpt, average=rule)
    assert_same_posterior(resumed.callback.posterior(), whole.callback.posterior())
