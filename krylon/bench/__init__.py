"""Benchmark suites behind ``krylon bench`` (not tests: they measure speed and accuracy)."""

SUITES = ("krylov", "dcdm")
