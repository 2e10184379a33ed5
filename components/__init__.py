"""What is deployed: the BeadsAutoDispatch component and the config it is built from."""

from components.auto_dispatch import BeadsAutoDispatch
from components.config import DeploySettings

__all__ = ["BeadsAutoDispatch", "DeploySettings"]
