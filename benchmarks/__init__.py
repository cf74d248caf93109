"""Benchmark scripts (a package only so that module names do not clash with the tests')."""
