"""What is deployed: the BeadsAutoDispatch component and the config it is built from."""
