"""`make bench`: benchmarks through the local runtime (figures, not timed tests)."""
