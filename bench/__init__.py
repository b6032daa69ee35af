"""Benchmark scripts (not tests): each prints a markdown table for docs/benchmarks.md."""
