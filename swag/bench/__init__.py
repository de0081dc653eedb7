"""The calibration and OOD benchmark behind ``swag bench`` (Fashion-MNIST vs MNIST).

The public face of the benchmark: its settings (:class:`BenchConfig`, :data:`PRESETS`), the
method registry (:data:`METHODS`, :data:`FGE_SAM`, :data:`BASELINES`), :func:`run_bench`, one
training run of its protocol (:func:`train`, :func:`small_cnn`, :func:`batches`), the mean ± std
tables over seeds (:func:`load_runs`, :func:`table`, :func:`paired_table`, :func:`stats`,
:func:`mean_std`, :data:`COLUMNS`), :func:`write_report`, and :class:`Progress`. The submodules
are private.
"""

from swag.bench._aggregate import COLUMNS, load_runs, mean_std, paired_table, stats, table
from swag.bench._config import PRESETS, BenchConfig
from swag.bench._evaluate import BASELINES, FGE_SAM, METHODS
from swag.bench._progress import Progress
from swag.bench._report import write_report
from swag.bench._runner import run_bench
from swag.bench._train import Run, batches, small_cnn, train

__all__ = [
    "BASELINES",
    "COLUMNS",
    "FGE_SAM",
    "METHODS",
    "PRESETS",
    "BenchConfig",
    "Progress",
    "Run",
    "batches",
    "load_runs",
    "mean_std",
    "paired_table",
    "run_bench",
    "small_cnn",
    "stats",
    "table",
    "train",
    "write_report",
]
