"""Key material for a throw-away cluster, made with the `openssl` CLI (no Python deps).

A CA, the API server's serving certificate signed by it (so clients verify TLS against the
CA instead of skipping verification), and the service-account token signing key pair.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Names a client may use for the API server: loopback, and in-cluster ones (the first IP of
# the service range is the `kubernetes` Service's ClusterIP).
_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

# Only this file configures openssl: nothing comes from the system's openssl.cnf.
_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = localcluster

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt

[alt]
{alt_names}
"""


@dataclass(frozen=True)
class Certs:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    """RSA private key that signs service-account tokens (kube-apiserver, controller-manager)."""
    sa_pub: Path


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("localcluster needs the `openssl` command (Debian package openssl)")
    completed = subprocess.run(
        [openssl, *args], capture_output=True, text=True, check=False, timeout=60
    )
    if completed.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{completed.stderr}")


def make_certs(directory: Path, service_ip: str) -> Certs:
    """Write a CA, a serving cert for 127.0.0.1/localhost/`service_ip`, and an SA key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    alt = ["IP.1 = 127.0.0.1", f"IP.2 = {service_ip}", "IP.3 = ::1"]
    alt += [f"DNS.{n} = {name}" for n, name in enumerate(_DNS_NAMES, start=1)]
    config = directory / "openssl.cnf"
    config.write_text(_CONFIG.format(alt_names="\n".join(alt)))
    certs = Certs(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", "-config", str(config), "-extensions", "v3_ca", *ec,
        "-keyout", str(certs.ca_key), "-out", str(certs.ca_cert),
        "-days", "3650", "-subj", "/CN=localcluster-ca",
    )  # fmt: skip
    csr = directory / "apiserver.csr"
    _openssl(
        "req", "-new", "-config", str(config), *ec,
        "-keyout", str(certs.serving_key), "-out", str(csr), "-subj", "/CN=kube-apiserver",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(certs.ca_cert), "-CAkey", str(certs.ca_key),
        "-set_serial", str(secrets.randbits(63)), "-days", "3650",
        "-extfile", str(config), "-extensions", "v3_server", "-out", str(certs.serving_cert),
    )  # fmt: skip
    csr.unlink()
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", str(certs.sa_key),
    )  # fmt: skip
    _openssl("pkey", "-in", str(certs.sa_key), "-pubout", "-out", str(certs.sa_pub))
    for key in (certs.ca_key, certs.serving_key, certs.sa_key):
        key.chmod(0o600)
    return certs
