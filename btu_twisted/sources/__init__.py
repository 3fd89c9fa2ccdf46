"""Where schedule rows come from: a Frappe site's MariaDB, a schedules file, or both.

Owns the adbapi pool and its parameterised queries, the change feed that
notices edits, the schedules file, and the writes of ``redis_job_id`` back
to the site.  Imports only the core modules.
"""
