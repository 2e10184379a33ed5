"""`python -m devtools.localcluster [--workdir DIR]`: a control plane on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from devtools.localcluster import KUBERNETES_VERSION, ClusterError, start_cluster


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler (Kubernetes
    v1.34.12, no kubelet) on 127.0.0.1 in a fresh work dir, print how to reach them, and
    stop them on Ctrl-C. The binaries come from tools/build-kube.sh (built on first use) or
    $LOCALCLUSTER_BIN_DIR.
    """
    parser = argparse.ArgumentParser(
        prog="python -m devtools.localcluster", description=main.__doc__
    )
    parser.add_argument("--workdir", type=Path, default=Path(".localcluster"))
    parser.add_argument("--bin-dir", type=Path, default=None, help="the built binaries")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to get ready")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with start_cluster(args.workdir, bin_dir=args.bin_dir, timeout=args.timeout) as cluster:
            timings = ", ".join(f"{name} {sec:.1f}s" for name, sec in cluster.timings.items())
            kubeconfig = shlex.quote(str(cluster.kubeconfig))
            path = shlex.quote(str(cluster.bin_dir))
            print(
                f"Kubernetes {KUBERNETES_VERSION} control plane at {cluster.server}"
                f" (ready: {timings})\n"
                f"\n"
                f"  export KUBECONFIG={kubeconfig}\n"
                f'  export PATH={path}:"$PATH"   # kubectl {KUBERNETES_VERSION}\n'
                f"  kubectl get ns\n"
                f"\n"
                f"admin token: {cluster.token}\n"
                f"logs: {cluster.log_dir}/*.log\n"
                f"No kubelet: pods stay Pending. Ctrl-C stops everything.",
                flush=True,
            )
            while True:
                time.sleep(1)
                cluster.check()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0
    except ClusterError as error:
        print(f"localcluster: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
