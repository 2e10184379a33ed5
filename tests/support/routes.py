"""BeadBoard's routes as the tests name them: the client's own constants, defined once."""

from jobs.beadboard import DISPATCH_PATH as DISPATCH
from jobs.beadboard import STATUS_PATH as STATUS

__all__ = ["DISPATCH", "STATUS"]
