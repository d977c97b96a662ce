"""The benchmark harness: validate each backend against the reference, then time it."""
