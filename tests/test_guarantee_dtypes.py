"""Every buffer-holding module of swag keeps its buffers' dtype under casts (issue 18, class 6).

Attached to a model as a submodule, a state object follows ``model.half()`` and
``model.to(dtype)``; its statistics must not be rounded to the weights' dtype. Device moves
(here ``.to("cpu")``) still reach it. The class list is found by walking the package, so a new
buffer holder without a case here fails :func:`test_every_module_class_is_covered`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import swag
from swag.snapshots import Snapshots


def _collector(model: nn.Module) -> nn.Module:
    return swag.Collector(model, max_rank=2)


def _snapshots(model: nn.Module) -> nn.Module:
    return Snapshots(model, max_snapshots=3)


def _lawa_collector(model: nn.Module) -> nn.Module:
    return swag.Collector(model, max_rank=2, average=swag.LAWA(3))  # holds a _LawaBound ring


HOLDERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "swag.core.collector.Collector": _collector,
    "swag.core._averaging_rules._LawaBound": _lawa_collector,
    "swag.family.snapshots.Snapshots": _snapshots,
}
WITHOUT_BUFFERS = {
    "swag.family.lowp.Quantizer",
    "swag.persistence._checked_state.CheckedState",  # the base: abstract
    "swag.core._averaging_rules.BoundRule",  # the rules' base: abstract
    "swag.core._averaging_rules._LerpBound",  # no buffer: its state is the collector's mean and m2
    "swag.core._state.CollectorState",  # the collector's state record: the buffers are Collector's
}  # the base: abstract


def _module_classes() -> set[str]:
    """Classes in swag's source that derive from ``nn.Module`` (read with ``ast``: the optional
    integrations need not be importable, and importing them would be slow)."""
    root = Path(swag.__file__).parent
    bases: dict[str, tuple[str, list[str]]] = {}
    for path in root.rglob("*.py"):
        module = ".".join(("swag", *path.relative_to(root).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = [ast.unparse(b).split(".")[-1] for b in node.bases]
                bases[node.name] = (f"{module}.{node.name}", names)
    modules = {"Module"}
    while True:  # the classes whose bases reach nn.Module, to a fixed point
        more = {n for n, (_, b) in bases.items() if modules & set(b)} - modules
        if not more:
            return {bases[n][0] for n in modules - {"Module"}}
        modules |= more


def test_every_module_class_is_covered() -> None:
    assert _module_classes() == set(HOLDERS) | WITHOUT_BUFFERS


CASTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.to(torch.bfloat16),
    "double": lambda m: m.double(),
    "to(float64, device)": lambda m: m.to("cpu", torch.float64),
}


@pytest.mark.parametrize("cast", list(CASTS), ids=str)
@pytest.mark.parametrize("holder", list(HOLDERS), ids=str)
def test_buffers_keep_their_dtype_and_values_under_model_casts(holder: str, cast: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = HOLDERS[holder](model)
    model.add_module("state", state)  # attached, as a callback or a user might
    for _ in range(2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3 + 1 / 3)  # values float16 cannot hold
        state.collect()  # type: ignore[operator]
    before = {k: v.clone() for k, v in state.state_dict().items() if isinstance(v, torch.Tensor)}
    CASTS[cast](model)
    after = state.state_dict()
    assert before  # the holder has tensors to check
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key  # not rounded through the cast dtype
    assert next(model[0].parameters()).dtype != torch.float32  # the model itself was cast
    state.to("cpu")  # a device move still works
