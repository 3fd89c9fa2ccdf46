"""The timer: wake at the earliest planned run, build its job, claim and enqueue
it exactly once, and hand the name back for its next run.

Imports the core modules, store, sources' record types, jobs and planning.
"""
