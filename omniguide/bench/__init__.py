"""Benchmark recipes (``bench-*`` kinds) that belong to a modality: each module registers its kind
when the recipe system loads runners (see :func:`omniguide.recipes.runners.load_all`). The
testbed and core benchmarks still live in :mod:`omniguide.recipes.runners` (``bench_core``,
``bench_guiders``, ``bench_diffusers``) with their shared kit in :mod:`omniguide.recipes.benchkit`."""
