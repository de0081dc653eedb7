"""The implementations compared: swag itself, its peers, and torch's ``AveragedModel``.

Peers are imported at benchmark time from ``.peers/`` (see ``benchmarks/install_peers.sh``);
none of their code lives in this repository. swa_gaussian installs a top-level package named
``swag``, which would shadow ours, and its package ``__init__`` imports torchvision; so its
``posteriors/swag.py`` is loaded by file path inside a synthetic package of another name, which
lets its relative import of ``utils`` resolve without running any ``__init__``. torch-uncertainty's
``methods/swa.py`` and ``methods/swag.py`` are loaded the same way (its ``__init__`` pulls in
Lightning).
"""

from __future__ import annotations

import copy
import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn

from swag import Collector

PEERS_DIR = Path(__file__).resolve().parent.parent / ".peers"


@dataclass
class Impl:
    """One implementation under test: its collect step and the tensors it holds."""

    collect: Callable[[nn.Module], None]
    held: Callable[[], list[Tensor]]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _synthetic_package(name: str, path: Path) -> None:
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


def load_peers(peers_dir: Path = PEERS_DIR) -> dict[str, types.ModuleType | str]:
    """Import the peers: name → module, or → why it could not be imported ("not installed")."""
    out: dict[str, types.ModuleType | str] = {}
    if not peers_dir.is_dir():
        reason = f"not installed (no {peers_dir}; run benchmarks/install_peers.sh)"
        return {"swa_gaussian": reason, "torch_uncertainty": reason}
    if str(peers_dir) not in sys.path:
        sys.path.append(str(peers_dir))  # appended: our own `swag` keeps precedence
    sources = {
        "swa_gaussian": (peers_dir / "swag", "posteriors", "posteriors.swag"),
        "torch_uncertainty": (peers_dir / "torch_uncertainty", "methods", "methods.swag"),
    }
    for peer, (root, sub, module) in sources.items():
        alias = f"_peer_{peer}"
        if not (root / sub).is_dir():
            out[peer] = "not installed"
            continue
        try:
            _synthetic_package(alias, root)
            _synthetic_package(f"{alias}.{sub}", root / sub)
            out[peer] = importlib.import_module(f"{alias}.{module}")
        except Exception as exc:  # a broken peer install must not stop the benchmark
            out[peer] = f"not importable: {type(exc).__name__}: {exc}"
    return out


def ours(model: nn.Module, max_rank: int, **kwargs: Any) -> Impl:
    """swag's :class:`~swag.Collector`."""
    collector = Collector(model, max_rank=max_rank, **kwargs)
    note = "torch.compile, opt-in" if kwargs.get("compiled") else ""
    return Impl(collector.collect, lambda: list(collector.buffers()), note, {"obj": collector})


def averaged_model(model: nn.Module, *, foreach: bool) -> Impl:
    """``torch.optim.swa_utils.AveragedModel`` (mean only): default or foreach lerp path."""
    multi = get_swa_multi_avg_fn() if foreach else None  # type: ignore[no-untyped-call]
    avg = AveragedModel(model, multi_avg_fn=multi)
    note = "mean only; foreach lerp" if foreach else "mean only; default avg_fn (CPU: per tensor)"
    return Impl(avg.update_parameters, lambda: [*avg.parameters(), *avg.buffers()], note)


def swa_gaussian(
    module: types.ModuleType, build: Callable[[], nn.Module], device: torch.device, max_rank: int
) -> Impl:
    """swa_gaussian's ``SWAG`` (mean, E[θ²], and a K-row deviation matrix grown by ``cat``)."""
    swag = module.SWAG(build, no_cov_mat=max_rank == 0, max_num_models=max_rank).to(device)
    return Impl(swag.collect_model, lambda: list(swag.buffers()), extra={"obj": swag})


def tu_swag(module: types.ModuleType, model: nn.Module, max_rank: int) -> Impl:
    """torch-uncertainty's ``SWAG`` wrapper, statistics only (``num_estimators=0``).

    By default it also draws and deep-copies 16 sampled models after every update; that part is
    left out here so that the comparison is of collecting alone.
    """
    peer = module.SWAG(
        copy.deepcopy(model),
        cycle_start=0,
        cycle_length=1,
        diag_covariance=max_rank == 0,
        max_num_models=max_rank,
        num_estimators=0,
    )

    def collect(m: nn.Module) -> None:
        peer.core_model = m
        peer.update_wrapper(1)

    return Impl(collect, lambda: list(peer.swag_stats.values()), "num_estimators=0", {"obj": peer})


def tu_swa(module: types.ModuleType, model: nn.Module) -> Impl:
    """torch-uncertainty's ``SWA`` wrapper (mean only)."""
    peer = module.SWA(copy.deepcopy(model), cycle_start=0, cycle_length=1)

    def collect(m: nn.Module) -> None:
        peer.core_model = m
        peer.update_wrapper(0)

    def held() -> list[Tensor]:
        return [] if peer.swa_model is None else list(peer.swa_model.parameters())

    return Impl(collect, held, "mean only")


def tu_swa_module(swag_module: types.ModuleType) -> types.ModuleType:
    """The ``swa`` module beside torch-uncertainty's ``swag`` module."""
    return sys.modules[swag_module.__name__.rsplit(".", 1)[0] + ".swa"]


def held_bytes(tensors: list[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
