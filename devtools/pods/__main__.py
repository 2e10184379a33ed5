"""`python -m devtools.pods`: the pod executor, a kubelet stand-in for a local cluster."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from devtools.localservices.bd import ToolBuildError, build_tool, real_bd_path
from devtools.pods.env import ImageEnv
from devtools.pods.executor import Executor
from devtools.pods.kube import Api, KubeConfig
from devtools.pods.runner import make_image_like_venv


def main(argv: list[str] | None = None) -> int:
    """Register a Node with the API server of KUBECONFIG and run the pods bound to it as
    local processes (see devtools/pods/executor.py for what is and is not emulated). Container
    output: WORKDIR/pods/<namespace>_<name>.log.
    """
    parser = argparse.ArgumentParser(prog="python -m devtools.pods", description=main.__doc__)
    # Not $KUBECONFIG: that may name a real cluster, which must not get this Node.
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=Path(".localcluster/kubeconfig"),
        help="admin kubeconfig (default: the one `make cluster` writes)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".localcluster/executor"))
    parser.add_argument("--node-name", default="executor")
    parser.add_argument(
        "--python", type=Path, default=None, help="the image's python (default: a new venv)"
    )
    parser.add_argument(
        "--bd", type=Path, default=None, help="bd 1.0.2 (default: $BD_REAL, else built)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    # httpx logs every request at INFO: the log is the executor's own lines, as it was.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir: Path = args.workdir.resolve()
    python: Path | None = args.python
    if python is None:
        venv = workdir / "image-venv"
        python = venv / "bin" / "python"
        if not python.exists():
            make_image_like_venv(venv)
    bd: Path | None = args.bd or real_bd_path()
    if bd is None:
        try:
            bd = build_tool("bd")
        except ToolBuildError as error:
            print(f"pods: {error}", file=sys.stderr)
            return 1
    image = ImageEnv.agent_image(workdir / "image", python.absolute(), bd.absolute())
    api = Api(KubeConfig.load(args.kubeconfig))
    executor = Executor(api=api, node_name=args.node_name, workdir=workdir, image=image)
    # SIGTERM and Ctrl-C: stop every container, remove the Node, exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: executor.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: executor.stop())
    executor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
