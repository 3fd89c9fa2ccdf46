"""The function every benchmark job names.  No worker runs during a benchmark,
so it is never called; it only has to be importable by both schedulers."""


def noop(**kwargs: object) -> None:
    return None
