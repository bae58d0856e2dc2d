"""The benchmark: grids of methods x attacks x seeds, a content-addressed model cache, resumable runs,
generated tables (``modelprove bench PRESET``)."""

from modelprove.bench.cache import BenchCache, recipe_key
from modelprove.bench.config import BenchConfig, BenchConfigError, load_bench_config, parse_bench_config, preset_names
from modelprove.bench.runner import BenchRun, default_workers, run_bench

__all__ = ["BenchCache", "BenchConfig", "BenchConfigError", "BenchRun", "default_workers", "load_bench_config", "parse_bench_config",
           "preset_names", "recipe_key", "run_bench"]
