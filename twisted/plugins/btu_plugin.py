"""twistd plugin: ``twistd btu --config PATH``. Kept to one line so an import
error in the application surfaces when the service is made, not as twistd's
"Unknown command"."""

from twisted.application.service import ServiceMaker

btu = ServiceMaker(
    "btu_twisted",
    "btu_twisted.tap",
    "BTU scheduler: turns BTU Task Schedules into Python RQ jobs.",
    "btu",
)
