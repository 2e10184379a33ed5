"""`python -m devtools.pods`: the pod executor, a kubelet stand-in for a local cluster."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from devtools.localservices.bd import ToolBuildError, build_tool, real_bd_path
from devtools.pods.env import image_path
from devtools.pods.executor import Executor
from devtools.pods.kube import Api, KubeConfig
from devtools.pods.runner import make_image_like_venv


def main(argv: list[str] | None = None) -> int:
    """Register a Node with the API server of the kubeconfig and run the pods bound to it as
    local processes (devtools/pods/executor.py says what is modelled). Container output:
    WORKDIR/pods/<namespace>_<name>.log."""
    parser = argparse.ArgumentParser(prog="python -m devtools.pods", description=main.__doc__)
    # Not $KUBECONFIG: that may name a real cluster, which must not get this Node.
    parser.add_argument("--kubeconfig", type=Path, default=Path(".localcluster/kubeconfig"))
    parser.add_argument("--workdir", type=Path, default=Path(".localcluster/executor"))
    parser.add_argument("--node-name", default="executor")
    parser.add_argument("--python", type=Path, help="the image's python (default: a new venv)")
    parser.add_argument("--bd", type=Path, help="bd 1.0.2 (default: $BD_REAL, else built)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    workdir: Path = args.workdir.resolve()
    python: Path = args.python or make_image_like_venv(workdir / "image-venv")
    try:
        bd: Path = args.bd or real_bd_path() or build_tool("bd")
    except ToolBuildError as error:
        print(f"pods: {error}", file=sys.stderr)
        return 1
    path = image_path(workdir / "image" / "bin", python.absolute(), bd.absolute())
    executor = Executor(Api(KubeConfig.load(args.kubeconfig)), args.node_name, workdir, path)
    # SIGTERM and Ctrl-C: stop every container, remove the Node, exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: executor.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: executor.stop())
    executor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
