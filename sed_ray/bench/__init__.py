"""Benchmarks: commands that print figures. Targets live here and in docs/benchmarks.md, not in tests."""
