"""Benchmarks: a matrix of models x losses x seeds (or folds) trained, scored and reported, with ensembles.

On top of training, ensemble and evaluation: every run is trained with
:func:`emseg.training.train`, every ensemble built with
:func:`emseg.ensemble.build_ensemble`, every result scored with
:func:`emseg.evaluation.score_segmentation`.

>>> from emseg.benchmark import run_benchmark
>>> results = run_benchmark("bench.yaml", "bench-out")   # doctest: +SKIP
"""

from emseg.benchmark._config import BenchConfig, load_bench_config
from emseg.benchmark._report import write_report
from emseg.benchmark._runner import run_benchmark

__all__ = ["BenchConfig", "load_bench_config", "run_benchmark", "write_report"]
