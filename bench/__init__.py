"""Steward benchmarks (``make bench``): figures for the closing notes, never timed assertions in tests."""
