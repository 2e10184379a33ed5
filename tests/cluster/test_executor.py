"""The pod executor's pure parts, without a cluster: the container's env, `$(VAR)`
expansion, the kubelet-style atomic volume writes, kubeconfig reading. (Its behaviour
against the API server is in test_cluster.py.)"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from devtools.pods.env import container_env, expand
from devtools.pods.kube import KubeConfig
from devtools.pods.volumes import atomic_write


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x-$(A)-$(B)", "x-1-two"),
        ("$$(A)", "$(A)"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$$(A)", "$1"),
        ("no refs", "no refs"),
        ("$(A", "$(A"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == expected


_OBJECTS = {("configmaps", "cfg"): {"A": "from-cfg", "B": "b"}, ("secrets", "s"): {"pw": "x"}}


def _lookup(plural: str, name: str) -> dict[str, str]:
    return _OBJECTS[plural, name]


def test_container_env_layers_image_env_from_and_env_in_order() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "P_"}],
        "env": [
            {"name": "PATH", "value": "/pod/bin:$(PATH)"},
            {"name": "P_A", "value": "mine-$(P_B)"},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
        ],
    }
    env = container_env(container, _lookup, {"PATH": "/image/bin"})
    assert env == {"PATH": "/pod/bin:/image/bin", "P_A": "mine-b", "P_B": "b", "PW": "x"}


def test_container_env_fails_on_a_source_it_does_not_model() -> None:
    field_ref = {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    with pytest.raises(KeyError, match="secretKeyRef"):
        container_env({"env": [field_ref]}, _lookup, {})


def _visible(directory: Path) -> dict[str, str]:
    """What a container sees: the top-level names, read through their symlinks."""
    return {
        entry.name: entry.read_text()
        for entry in sorted(directory.iterdir())
        if not entry.name.startswith("..")
    }


def test_atomic_write_swaps_the_whole_content_through_one_symlink(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    atomic_write(volume, {"ENABLED": (b"true", 0o444), "OTHER": (b"x", 0o444)})
    first = os.readlink(volume / "..data")
    assert _visible(volume) == {"ENABLED": "true", "OTHER": "x"}
    assert os.readlink(volume / "ENABLED") == "..data/ENABLED"
    assert (volume / "ENABLED").stat().st_mode & 0o777 == 0o444

    atomic_write(volume, {"ENABLED": (b"false", 0o444)})
    assert _visible(volume) == {"ENABLED": "false"}  # a key gone from the object is gone
    assert os.readlink(volume / "..data") != first
    assert not (volume / first).exists()  # the old payload dir is removed
    hidden = sorted(p.name for p in volume.iterdir() if p.name.startswith(".."))
    assert len(hidden) == 2 and "..data" in hidden, hidden


def test_atomic_write_nests_item_paths(tmp_path: Path) -> None:
    volume = tmp_path / "code"
    atomic_write(volume, {"jobs/__main__.py": (b"print()", 0o444)})
    assert (volume / "jobs" / "__main__.py").read_text() == "print()"
    assert os.readlink(volume / "jobs") == "..data/jobs"


def test_kubeconfig_current_context_with_token(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    config = {
        "current-context": "b",
        "clusters": [
            {"name": "one", "cluster": {"server": "https://127.0.0.1:1"}},
            {
                "name": "two",
                "cluster": {
                    "server": "https://127.0.0.1:2/",
                    "certificate-authority-data": base64.b64encode(pem.encode()).decode(),
                },
            },
        ],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
        "contexts": [
            {"name": "a", "context": {"cluster": "one", "user": "u"}},
            {"name": "b", "context": {"cluster": "two", "user": "u"}},
        ],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    loaded = KubeConfig.load(path)
    assert loaded == KubeConfig(server="https://127.0.0.1:2", token="secret-token", ca_pem=pem)


def test_kubeconfig_without_a_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "current-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {client-certificate: /x}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    with pytest.raises(ValueError, match="token authentication only"):
        KubeConfig.load(path)
