"""Redis: the keys of the daemon, their Lua scripts, the run history and the gateway.

Owns every byte the daemon writes to Redis (the sorted set, the member index,
the history inbox and lists, the prefix lease) and the one connection pool
all of it goes through.  Imports only the core modules at the top of the
package; never sources, jobs, planning, timing, ops or daemon.
"""
