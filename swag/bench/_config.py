"""Settings of the calibration and OOD benchmark, and its four presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchConfig:
    """Everything that decides a benchmark run. Epoch counts are per training run.

    Protocol (the SWAG paper's, scaled down): each run trains ``epochs`` epochs with SGD +
    momentum; the learning rate is ``lr`` for the first half of the run's decay window, falls
    linearly to its final value by 90% of the window, then stays there. An SGD run's window is the
    whole run and its final rate ``lr * 0.01``; a SWAG run's window is its first
    ``epochs - swa_epochs`` epochs and its final rate ``swa_lr``, held constant for the last
    ``swa_epochs`` epochs while the collector records ``collects_per_epoch`` iterates per epoch.
    An FGE run (same length as an SGD run) keeps ``lr`` until ``fge_cycles`` cycles, linear
    from ``lr`` to ``lr / 100``, fill its last ``swa_epochs`` epochs, with a snapshot after each
    cycle's last step. SAM runs wrap the same SGD in SAM with radius ``sam_rho`` (twice the
    gradient evaluations); ``fge_sam`` says whether a plain ``swag bench`` trains the FGE and
    SAM rows (FGE, SWA (cyclical), SAM, SWAG (SAM)) at all.
    The posterior scale of the fitted-scale rows is fitted on the first ``fit_val_size``
    validation images with ``fit_samples`` draws per candidate (:func:`swag.fit_scale`), rounded
    up to a multiple of MultiSWAG's members so that each is weighed equally.
    """

    preset: str
    epochs: int = 8
    swa_epochs: int = 4
    collects_per_epoch: int = 6
    lr: float = 0.05
    swa_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    width: int = 8
    dropout: float = 0.2
    train_size: int | None = None
    val_size: int = 5000
    test_size: int | None = None
    ood_size: int | None = None
    shift_size: int = 2000
    rotate_degrees: float = 45.0
    # test images per shift-intensity set (30 corruption sets + 7 rotations); 0 turns them off
    intensity_size: int = 25
    # the Laplace and IVON rows (extra `baselines`): on in every preset, skipped with a message
    # when their package is missing; `--no-baselines` leaves them out
    baselines: bool = True
    ivon_lr: float = 0.1
    ivon_hess_init: float = 1.0
    max_rank: int = 20
    scale: float = 0.5
    diag_scale: float = 1.0
    num_samples: int = 30
    members: int = 3
    bn_batches: int = 20
    eval_batch_size: int = 500
    fit_samples: int = 10
    fit_val_size: int = 2000
    fit_tol: float = 0.1
    fge_cycles: int = 4
    sam_rho: float = 0.05
    fge_sam: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.swa_epochs < self.epochs:
            raise ValueError(
                f"swa_epochs must be between 1 and epochs - 1, got {self.swa_epochs} with "
                f"epochs={self.epochs}"
            )
        if self.members < 1 or self.num_samples < self.members:
            raise ValueError(
                f"need members >= 1 and num_samples >= members, got members={self.members}, "
                f"num_samples={self.num_samples}"
            )
        if self.fge_cycles < 1:
            raise ValueError(f"fge_cycles must be >= 1, got {self.fge_cycles}")
        if not self.sam_rho > 0:
            raise ValueError(f"sam_rho must be > 0 (0.05 in the SAM paper), got {self.sam_rho}")

    def replace(self, **changes: object) -> BenchConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, BenchConfig] = {
    # Seconds: for tests and CI.
    "smoke": BenchConfig(
        preset="smoke",
        epochs=2,
        swa_epochs=1,
        collects_per_epoch=4,
        width=4,
        train_size=1024,
        val_size=256,
        test_size=256,
        ood_size=256,
        shift_size=128,
        intensity_size=16,
        max_rank=3,
        num_samples=4,
        members=2,
        bn_batches=2,
        eval_batch_size=256,
        fit_samples=3,  # not a multiple of the 2 members: the tests see it rounded up
        fit_val_size=128,
        fit_tol=0.5,
        fge_cycles=2,
    ),
    # The paper's regime, scaled down: SGD trained past its best validation NLL (overconfident)
    # on 10,000 images for 30 epochs, the paper's weight decay and SWA rate (lr / 5); under
    # ten minutes on two idle CPU cores (7 min 50 s measured, seed 0).
    "default": BenchConfig(
        preset="default",
        epochs=30,
        swa_epochs=15,
        collects_per_epoch=2,
        swa_lr=0.01,
        dropout=0.1,
        train_size=10000,
        fge_cycles=5,
        # FGE and SAM add five SGD runs' worth of training: off, to keep ten minutes
        fge_sam=False,
    ),
    # The earlier default: a short budget on all 55,000 images; SGD stays calibrated here.
    "short": BenchConfig(preset="short"),
    # The paper's scale of effort, for a GPU: longer runs, wider net, K=20 from one per epoch.
    "full": BenchConfig(
        preset="full",
        epochs=60,
        swa_epochs=30,
        collects_per_epoch=1,
        width=32,
        shift_size=10000,
        intensity_size=1000,
        bn_batches=100,
        fge_cycles=10,
    ),
}
