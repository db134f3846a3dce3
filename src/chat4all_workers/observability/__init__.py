"""Metrics, tracing and logging: a leaf that every layer may use and that imports none of them."""
