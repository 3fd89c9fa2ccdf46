"""btu_twisted: the BTU scheduler daemon on Twisted.

Turns the BTU Task Schedules of a Frappe site into Python RQ jobs, on time and
exactly once; see ``README.rst`` for the contract it keeps.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
