"""Benchmark suites shipped with lorabench (``lorabench run --preset NAME``); YAML files."""
