"""From schedule names to planned runs: the planner draining the FIFO, and the
full refresh that feeds it.

Imports the core modules, store and sources.
"""
