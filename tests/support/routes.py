"""The routes as the tests name them, defined once: BeadBoard's two are the client's own
constants; the agent service's health route is the one the stub serves."""

from devtools.localservices.beadboard import HEALTH
from jobs.beadboard import DISPATCH_PATH as DISPATCH
from jobs.beadboard import STATUS_PATH as STATUS

__all__ = ["DISPATCH", "HEALTH", "STATUS"]
