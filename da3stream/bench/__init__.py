"""Benchmarks that print JSON: ``python -m da3stream.bench {model,engine,graph,pipeline,retrieval}``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> dict``. Results are ratios measured in one run where a
comparison exists, plus the absolute figures they come from.
"""
