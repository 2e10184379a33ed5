"""Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Everything lives in one work dir (a fresh cluster on every start; etcd's data is removed
again on exit, the logs stay):

    <workdir>/kubeconfig             admin kubeconfig: static token, server CA embedded
    <workdir>/logs/<component>.log   stdout+stderr of each component
    <workdir>/certs/                 CA, API server serving cert, service-account key pair
    <workdir>/etc/                   token file, the components' kubeconfigs
    <workdir>/etcd-data/             while running

Ports are free ones picked at random (several clusters may run at once); a start that
loses a port to another process is retried with new ones.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devtools.localcluster.certs import Certs, make_certs
from devtools.localcluster.processes import ClusterError, Launcher, PortInUse
from devtools.paths import ROOT
from devtools.ports import free_port

KUBERNETES_VERSION = "v1.34.12"
BUILD_SCRIPT = ROOT / "tools" / "build-kube.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: first address of SERVICE_CIDR
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# NamespaceLifecycle, ServiceAccount, PodSecurity, LimitRanger and ResourceQuota are on by
# default in v1.34; named anyway, since the tests rely on them (and the rest of the default
# set stays on: --enable-admission-plugins only adds).
ADMISSION_PLUGINS = "NamespaceLifecycle,ServiceAccount,PodSecurity,LimitRanger,ResourceQuota"
_START_ATTEMPTS = 3


def kube_bin_dir() -> Path:
    """The directory holding the five binaries.

    $LOCALCLUSTER_BIN_DIR when set, else what tools/build-kube.sh prints (it builds them the
    first time, ~10 min on two cores, and takes a second once they are cached).
    """
    configured = os.environ.get("LOCALCLUSTER_BIN_DIR")
    if configured:
        directory = Path(configured)
    else:
        completed = subprocess.run(
            [str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
        )  # stderr (build progress) passes through
        if completed.returncode != 0:
            raise ClusterError(f"{BUILD_SCRIPT} exited {completed.returncode} (see its stderr)")
        directory = Path(completed.stdout.strip())
    missing = [name for name in BINARIES if not os.access(directory / name, os.X_OK)]
    if missing:
        raise ClusterError(f"{directory} lacks {', '.join(missing)}")
    return directory


@dataclass
class Cluster:
    """A running control plane. Its processes live as long as the `start_cluster` block."""

    workdir: Path
    bin_dir: Path
    server: str
    """https://127.0.0.1:<port>"""
    token: str
    """Bearer token of `admin` (group system:masters)."""
    kubeconfig: Path
    ca_file: Path
    """CA of the API server's serving certificate (also in the kubeconfig)."""
    log_dir: Path
    timings: dict[str, float]
    """Seconds from the start until etcd, the API server (/readyz) and everything was ready."""
    _launcher: Launcher = field(repr=False)

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and the built kubectl first on PATH."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.workdir / "kube-cache"),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (v1.34.12) against this cluster; output captured as text."""
        completed = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and completed.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} exited {completed.returncode}:\n"
                f"{completed.stderr}{completed.stdout}"
            )
        return completed

    def check(self) -> None:
        """Raise ClusterError if a component has exited."""
        self._launcher.check()


def _kubeconfig(server: str, ca_cert: Path, user: str, token: str) -> str:
    # JSON is YAML: every kubeconfig reader (client-go, the Python client) takes it.
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "localcluster",
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": "localcluster",
                "context": {"cluster": "localcluster", "user": user, "namespace": "default"},
            }
        ],
        "current-context": "localcluster",
    }
    return json.dumps(config, indent=2) + "\n"


def _write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


class _Http:
    """GETs on loopback: never through a proxy from the environment, TLS verified by the CA."""

    def __init__(self, ca_cert: Path) -> None:
        context = ssl.create_default_context(cafile=str(ca_cert))
        self._client = httpx.Client(verify=context, timeout=5, trust_env=False)

    def ok(self, url: str, token: str | None = None) -> bool:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        try:
            return self._client.get(url, headers=headers).status_code == 200
        except httpx.HTTPError:  # refused, reset, TLS
            return False


@dataclass(frozen=True)
class _Setup:
    workdir: Path
    bin_dir: Path
    certs: Certs
    etc: Path
    log_dir: Path
    etcd_data: Path


def _setup(workdir: Path, bin_dir: Path) -> _Setup:
    workdir.mkdir(parents=True, exist_ok=True)
    etcd_data = workdir / "etcd-data"
    shutil.rmtree(etcd_data, ignore_errors=True)  # a fresh cluster every time
    etc = workdir / "etc"
    shutil.rmtree(etc, ignore_errors=True)
    etc.mkdir(mode=0o700)
    log_dir = workdir / "logs"
    log_dir.mkdir(exist_ok=True)
    certs = make_certs(workdir / "certs", SERVICE_IP)
    return _Setup(workdir, bin_dir, certs, etc, log_dir, etcd_data)


def _start(setup: _Setup, launcher: Launcher, timeout: float, controllers: bool) -> Cluster:
    """etcd -> kube-apiserver (/readyz) -> kubeconfigs -> controller-manager and scheduler
    (with `controllers`: until their /healthz and the `default` ServiceAccount are there)."""
    started = time.monotonic()
    deadline = started + timeout
    timings: dict[str, float] = {}
    http = _Http(setup.certs.ca_cert)

    etcd_url = _start_etcd(setup, launcher)
    launcher.wait("etcd", lambda: http.ok(f"{etcd_url}/health"), deadline)
    timings["etcd"] = time.monotonic() - started

    tokens = _write_tokens(setup.etc)
    server = _start_apiserver(setup, launcher, etcd_url)
    launcher.wait("kube-apiserver /readyz", lambda: http.ok(f"{server}/readyz"), deadline)
    timings["kube-apiserver"] = time.monotonic() - started

    kubeconfig = _write_kubeconfigs(setup, server, tokens)
    healthz = {
        "kube-controller-manager": _start_controller_manager(setup, launcher),
        "kube-scheduler": _start_scheduler(setup, launcher),
    }
    if controllers:
        for name, url in healthz.items():
            launcher.wait(f"{name} /healthz", functools.partial(http.ok, url), deadline)
        # The service-account controller runs: pods in `default` can be admitted.
        sa_url = f"{server}/api/v1/namespaces/default/serviceaccounts/default"
        ready = functools.partial(http.ok, sa_url, tokens["admin"])
        launcher.wait("ServiceAccount default/default", ready, deadline)
    timings["all"] = time.monotonic() - started
    return Cluster(
        workdir=setup.workdir,
        bin_dir=setup.bin_dir,
        server=server,
        token=tokens["admin"],
        kubeconfig=kubeconfig,
        ca_file=setup.certs.ca_cert,
        log_dir=setup.log_dir,
        timings=timings,
        _launcher=launcher,
    )


def _start_etcd(setup: _Setup, launcher: Launcher) -> str:
    """Single member, throw-away data (no fsync); its client URL."""
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    launcher.start(
        "etcd",
        [
            str(setup.bin_dir / "etcd"),
            "--name=localcluster",
            f"--data-dir={setup.etcd_data}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=localcluster={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    return client_url


def _write_tokens(etc: Path) -> dict[str, str]:
    """The API server's static tokens of admin, the controller-manager and the scheduler."""
    tokens = {name: secrets.token_hex(24) for name in ("admin", "kcm", "scheduler")}
    # token,user,uid,"groups". The controller-manager runs every controller under its own
    # identity (--use-service-account-credentials=false), so it needs more than its
    # bootstrap role; on this throw-away cluster all three are system:masters.
    _write_private(
        etc / "tokens.csv",
        f'{tokens["admin"]},admin,admin,"system:masters"\n'
        f'{tokens["kcm"]},system:kube-controller-manager,kcm,"system:masters"\n'
        f'{tokens["scheduler"]},system:kube-scheduler,scheduler,"system:masters"\n',
    )
    return tokens


def _start_apiserver(setup: _Setup, launcher: Launcher, etcd_url: str) -> str:
    """Static tokens, RBAC, serving cert from our CA; its https:// URL."""
    port = free_port()
    certs = setup.certs
    launcher.start(
        "kube-apiserver",
        [
            str(setup.bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Service gets no Endpoints: a loopback address is invalid in
            # one, and the default reconciler would log that error every 10 s.
            "--endpoint-reconciler-type=none",
            f"--secure-port={port}",
            f"--tls-cert-file={certs.serving_cert}",
            f"--tls-private-key-file={certs.serving_key}",
            f"--token-auth-file={setup.etc / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--enable-admission-plugins={ADMISSION_PLUGINS}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={certs.sa_pub}",
            f"--service-account-signing-key-file={certs.sa_key}",
            "--allow-privileged=true",
            "--profiling=false",
        ],
    )
    return f"https://127.0.0.1:{port}"


def _write_kubeconfigs(setup: _Setup, server: str, tokens: dict[str, str]) -> Path:
    """The admin kubeconfig (returned) and the controller-manager's and scheduler's."""
    kubeconfig = setup.workdir / "kubeconfig"
    ca_cert = setup.certs.ca_cert
    _write_private(kubeconfig, _kubeconfig(server, ca_cert, "admin", tokens["admin"]))
    for name in ("kcm", "scheduler"):
        config = _kubeconfig(server, ca_cert, name, tokens[name])
        _write_private(setup.etc / f"{name}.kubeconfig", config)
    return kubeconfig


def _component_flags(setup: _Setup, name: str, config: Path, port: int) -> list[str]:
    """What every control-plane component after the API server takes: its binary, its
    kubeconfig (also for authn/authz), a loopback HTTPS port with our serving cert."""
    return [
        str(setup.bin_dir / name),
        f"--kubeconfig={config}",
        f"--authentication-kubeconfig={config}",
        f"--authorization-kubeconfig={config}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={setup.certs.serving_cert}",
        f"--tls-private-key-file={setup.certs.serving_key}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def _start_controller_manager(setup: _Setup, launcher: Launcher) -> str:
    """Every controller, signing with our CA; its /healthz URL."""
    port, config, certs = free_port(), setup.etc / "kcm.kubeconfig", setup.certs
    launcher.start(
        "kube-controller-manager",
        [
            *_component_flags(setup, "kube-controller-manager", config, port),
            "--controllers=*",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={certs.sa_key}",
            f"--root-ca-file={certs.ca_cert}",
            f"--cluster-signing-cert-file={certs.ca_cert}",
            f"--cluster-signing-key-file={certs.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ],
    )
    return f"https://127.0.0.1:{port}/healthz"


def _start_scheduler(setup: _Setup, launcher: Launcher) -> str:
    """The default scheduler; its /healthz URL."""
    port, config = free_port(), setup.etc / "scheduler.kubeconfig"
    launcher.start("kube-scheduler", _component_flags(setup, "kube-scheduler", config, port))
    return f"https://127.0.0.1:{port}/healthz"


@contextlib.contextmanager
def start_cluster(
    workdir: Path,
    *,
    bin_dir: Path | None = None,
    timeout: float = 180.0,
    wait_for_controllers: bool = True,
) -> Iterator[Cluster]:
    """Start a fresh control plane in `workdir`; stop it when the block exits.

    Ready means: /readyz of the API server, and (wait_for_controllers) /healthz of the
    controller-manager and the scheduler plus the `default` ServiceAccount in `default`.
    `timeout` bounds the whole start (a cold start on two busy cores takes ~10-30 s).
    """
    workdir = workdir.resolve()
    bins = bin_dir.resolve() if bin_dir is not None else kube_bin_dir()
    launcher: Launcher | None = None
    try:
        for attempt in range(1, _START_ATTEMPTS + 1):
            setup = _setup(workdir, bins)
            launcher = Launcher(setup.log_dir)
            try:
                cluster = _start(setup, launcher, timeout, wait_for_controllers)
            except PortInUse:
                launcher.stop()
                if attempt == _START_ATTEMPTS:
                    raise
                continue
            break
        yield cluster
    finally:
        if launcher is not None:
            launcher.stop()
        shutil.rmtree(workdir / "etcd-data", ignore_errors=True)
