"""Turning a due run into the RQ job hash rq itself would write.

The ``function``, ``frappe_site`` and ``frappe`` builders (the last fetches
BTU's pickle over HTTP with treq).  Imports only the core modules.
"""
