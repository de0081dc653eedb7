"""The calibration and OOD benchmark behind ``swag bench`` (Fashion-MNIST vs MNIST)."""

from swag.bench.config import PRESETS, BenchConfig
from swag.bench.runner import run_bench

__all__ = ["PRESETS", "BenchConfig", "run_bench"]
