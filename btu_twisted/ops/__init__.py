"""What an operator sees: Prometheus metrics, the status page, log levels, and
the small helpers for memory and lateness figures.

Imports the core modules and store.
"""
