"""How the timer paces its work: how early it builds, how many it claims per
call, how long a burst's side effects wait.  Measured on a burst of 10,000
runs due at one second; one place to read (and change) them all."""

LOOKAHEAD = 2.0          # seconds before a run is due to read its row and build its job
FETCH_LIMIT = 20000      # due members looked at per wake-up
CLAIM_BATCH = 250        # members claimed per script call (Redis: ~3 ms per 250 jobs)
CLAIMS_IN_FLIGHT = 4     # claim calls sent before the first one's reply is read
FIRST_BATCH = 50         # a round's first call is small: its jobs land at once
BUILD_CHUNK = 500        # rows read per query; the next chunk's are read meanwhile
BUILD_SLICE = 100        # builds between two reactor turns at most
SLICE_SECS = 0.005       # and at most this long, for builders that do not wait
BUILD_CONCURRENCY = 16   # builds in flight at once (HTTP calls to the site)
# A round of claims waits this long at most for due jobs still being built.
BUILD_WAIT = 0.25
# Replans, job ids and log lines of a burst wait at most this long for its
# last claims (a schedule every second must be planned again in time).
HOLD_SECS = 0.5
# A prepared job whose row was read longer ago than the lookahead and this is
# built again from a fresh read before it is claimed (its claim was held up,
# e.g. Redis away).
ROW_SLACK = 1.0
# A bench's timers share one reactor: a burst of runs due on every site at one
# second means a window read, a row read and a claim per site, about 2.5 ms of
# the reactor each on this 2-core host (1,000 sites: 0.4 s to wake them all,
# then 400 sites a second).  Each timer of a bench of N sites starts this much
# per site ahead, LOOKAHEAD at least (4 s at 1,000 sites).
LOOKAHEAD_PER_SITE = 0.004


def lookahead_for(sites: int) -> float:
    """Seconds before a run is due that the timers of a bench of ``sites`` build it."""
    return max(LOOKAHEAD, sites * LOOKAHEAD_PER_SITE)
