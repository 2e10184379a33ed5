"""The real Pulumi engine on the `local` stack, through the Automation API; rendered YAML back.

No Python language host binary is involved (the Go module proxy serves none to build one
from): the program is an inline Automation API program, so the engine runs
`pulumi up --client=...` against a language runtime served from this very process. That
inline program only executes the project's own `__main__.py`, so what is deployed is
exactly what `pulumi up` would deploy.

The stack is `local` (Pulumi.local.yaml): the Kubernetes provider writes each manifest to
`kubernetes:renderYamlToDirectory` instead of applying it. State lives in a file backend
inside the work dir. The work dir gets copies of Pulumi.yaml and Pulumi.local.yaml: the
engine writes into the stack file (`encryptionsalt`, `config set`) and the committed file
must stay as it is while other people use the checkout.

    stack = LocalStack.create(ROOT / ".pulumi-local" / "demo")
    stack.up()
    manifests = stack.manifests()
    pod_spec = manifests.pod_spec("beads-dispatcher")

By hand: `python -m devtools.localdeploy up|preview|config-set KEY VALUE` (on .pulumi-local/demo).

`ClusterStack` is the same engine on the `cluster` stack (Pulumi.cluster.yaml): no
renderYamlToDirectory, so the provider applies every object to the API server named by the
`kubernetes:kubeconfig` the work dir's copy of the stack file is given (tests/cluster/ use
the loopback control plane of devtools/localcluster/).
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from devtools.paths import ROOT
from jobs.settings import env_name

PROJECT = "beads-autodispatch"
STACK = "local"
CLUSTER_STACK = "cluster"
LOCAL_DIR = ROOT / ".pulumi-local"  # gitignored
RENDER_KEY = "kubernetes:renderYamlToDirectory"
KUBECONFIG_KEY = "kubernetes:kubeconfig"
# The file backend encrypts secrets with a passphrase; the local stack holds none, so a
# fixed, public one is fine.
PASSPHRASE = "beads-autodispatch-local-stack"  # noqa: S105 (public on purpose, above)
PULUMI_BIN_ENV = "PULUMI_BIN"
BUILD_SCRIPT = ROOT / "tools" / "build-pulumi.sh"

Output = Callable[[str], None]


def pulumi_cli() -> Path:
    """The pulumi CLI: $PULUMI_BIN, else built or found in the tools cache by build-pulumi.sh."""
    given = os.environ.get(PULUMI_BIN_ENV, "").strip()
    if given:
        return Path(given)
    built = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, timeout=3600
    )
    if built.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT.name} failed:\n{built.stderr.strip()}")
    return Path(built.stdout.strip().splitlines()[-1])


def offline_env(backend_dir: Path) -> dict[str, str]:
    """What every pulumi command of the local stack runs with: no network, no pulumi.com."""
    return {
        "PULUMI_BACKEND_URL": backend_dir.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "1",
        # Plugins only from the plugin cache where build-pulumi.sh installed the provider;
        # a missing one is an error at once, never a download attempt.
        "PULUMI_IGNORE_AMBIENT_PLUGINS": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        # The CLI (3.259.0) is the SDK's own version; no need to ask it again.
        "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "1",
        "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
    }


def program_of(project_dir: Path) -> Callable[[], None]:
    """The inline program: a project's real __main__.py, as the python runtime runs it
    (this project's, or one under examples/)."""

    def program() -> None:
        runpy.run_path(str(project_dir / "__main__.py"), run_name="__main__")

    return program


program = program_of(ROOT)


@dataclass(frozen=True)
class Manifests:
    """Every rendered document, with lookups by kind and metadata.name."""

    documents: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for document in self.of_kind(kind):
            if document["metadata"]["name"] == name:
                return document
        raise KeyError(f"{kind}/{name}")

    def configmaps(self) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.of_kind("ConfigMap")}

    def cronjob(self, name: str) -> dict[str, Any]:
        return self.get("CronJob", name)

    def pod_spec(self, cronjob: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.cronjob(cronjob)["spec"]["jobTemplate"]["spec"]["template"][
            "spec"
        ]
        return spec


def load_manifests(directory: Path) -> Manifests:
    """Parse every YAML file the provider rendered (0-crd/, 1-manifest/), in path order."""
    documents: list[dict[str, Any]] = []
    for path in sorted(directory.rglob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return Manifests(documents)


def _prepare_work_dir(
    work_dir: Path, stack_name: str, cli: Path | None, project_dir: Path = ROOT
) -> None:
    """Copies of Pulumi.yaml and the stack file, an empty file backend, the CLI linked in.

    The stack file (the provider's settings) is this project's, whichever project runs.
    """
    if work_dir.exists() and any(work_dir.iterdir()):
        raise FileExistsError(f"{work_dir} is not empty")
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project_dir / "Pulumi.yaml", work_dir / "Pulumi.yaml")
    shutil.copyfile(ROOT / f"Pulumi.{stack_name}.yaml", work_dir / f"Pulumi.{stack_name}.yaml")
    (work_dir / "state").mkdir()
    # PulumiCommand runs <root>/bin/pulumi (or whatever `pulumi` PATH finds): give it
    # a root of its own that points at the CLI from the tools cache.
    cli_root = work_dir / "cli"
    (cli_root / "bin").mkdir(parents=True)
    (cli_root / "bin" / "pulumi").symlink_to(cli or pulumi_cli())


def _select_stack(work_dir: Path, stack_name: str, project_dir: Path = ROOT) -> auto.Stack:
    project = yaml.safe_load((work_dir / "Pulumi.yaml").read_text())["name"]
    return auto.create_or_select_stack(
        stack_name,
        project_name=project,
        program=program_of(project_dir),
        opts=auto.LocalWorkspaceOptions(
            work_dir=str(work_dir),
            env_vars=offline_env(work_dir / "state"),
            pulumi_command=auto.PulumiCommand(root=str(work_dir / "cli"), skip_version_check=True),
        ),
    )


class EngineStack:
    """A stack in its own work dir, driven through the Automation API: what every stack of
    this project can do (the local one and the one deployed into a cluster)."""

    def __init__(self, work_dir: Path, stack: auto.Stack, output: Output | None) -> None:
        self.work_dir = work_dir
        self.stack = stack
        self.output = output

    def up(self) -> auto.UpResult:
        return self.stack.up(on_output=self.output, color="never")

    def preview(self, diff: bool = True) -> auto.PreviewResult:
        return self.stack.preview(diff=diff, on_output=self.output, color="never")

    def set_config(self, key: str, value: str) -> None:
        """`pulumi config set`; a key without a namespace is one of the project's."""
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        self.stack.set_config(full_key, auto.ConfigValue(value=value))

    def config(self, key: str) -> str:
        full_key = key if ":" in key else f"{PROJECT}:{key}"
        return self.stack.get_config(full_key).value

    def outputs(self) -> dict[str, Any]:
        return {name: output.value for name, output in self.stack.outputs().items()}


class LocalStack(EngineStack):
    """The `local` stack in its own work dir: copies of the project and stack files, the
    file backend's state, the rendered manifests."""

    @classmethod
    def create(
        cls, work_dir: Path, cli: Path | None = None, output: Output | None = None
    ) -> LocalStack:
        """A new stack with empty state in `work_dir` (which must not exist or be empty)."""
        _prepare_work_dir(work_dir, STACK, cli)
        return cls.open(work_dir, output)

    @classmethod
    def open(cls, work_dir: Path, output: Output | None = None) -> LocalStack:
        """The stack `create` made in `work_dir`, with its state and config as they are now."""
        return cls(work_dir, _select_stack(work_dir, STACK), output)

    @property
    def render_dir(self) -> Path:
        """Where the provider writes: the stack's renderYamlToDirectory, relative to the
        project dir the engine (and so the provider) runs in."""
        value = self.stack.get_config(RENDER_KEY).value
        return self.work_dir / value

    def manifests(self) -> Manifests:
        return load_manifests(self.render_dir)


class ClusterStack(EngineStack):
    """The `cluster` stack (Pulumi.cluster.yaml): applied to a real API server with the
    provider's server-side apply, e.g. the loopback control plane of devtools/localcluster/.

        stack = ClusterStack.create(work_dir, cluster.kubeconfig, {"namespace": "ns", ...})
        stack.up()

    The work dir's copy of the stack file gets `kubernetes:kubeconfig` and the given config
    (keys without a namespace are the project's); the committed file stays as it is.
    """

    @classmethod
    def create(
        cls,
        work_dir: Path,
        kubeconfig: Path,
        config: Mapping[str, Any],
        cli: Path | None = None,
        output: Output | None = None,
        project_dir: Path = ROOT,
    ) -> ClusterStack:
        """A new stack with empty state in `work_dir` (which must not exist or be empty);
        `project_dir` another program than this project's (examples/two-agents)."""
        _prepare_work_dir(work_dir, CLUSTER_STACK, cli, project_dir)
        # Written into the file rather than `pulumi config set` key by key: one CLI call
        # each, and the file is what a reader of the work dir looks at.
        stack_file = work_dir / f"Pulumi.{CLUSTER_STACK}.yaml"
        document = yaml.safe_load(stack_file.read_text()) or {}
        values: dict[str, Any] = document.setdefault("config", {})
        if RENDER_KEY in values:
            raise ValueError(f"Pulumi.{CLUSTER_STACK}.yaml must not set {RENDER_KEY}")
        values[KUBECONFIG_KEY] = str(kubeconfig)
        for key, value in config.items():
            values[key if ":" in key else f"{PROJECT}:{key}"] = value
        stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
        return cls.open(work_dir, output, project_dir)

    @classmethod
    def open(
        cls, work_dir: Path, output: Output | None = None, project_dir: Path = ROOT
    ) -> ClusterStack:
        """The stack `create` made in `work_dir`, with its state and config as they are now."""
        return cls(work_dir, _select_stack(work_dir, CLUSTER_STACK, project_dir), output)

    def refresh(self) -> auto.RefreshResult:
        return self.stack.refresh(on_output=self.output, color="never")

    def destroy(self) -> auto.DestroyResult:
        return self.stack.destroy(on_output=self.output, color="never")


def local_run_overrides(bd_binary: Path, beads_dir: Path, beadboard_url: str) -> dict[str, str]:
    """Env overrides that run a rendered container on this machine instead of in the cluster.

    The real bd and an embedded-mode database stand in for the image's bd and the Dolt
    sql-server, a loopback stub for BeadBoard. Everything else is the rendered pod's own.
    """
    return {
        env_name("bd_bin"): str(bd_binary),
        env_name("beads_db"): str(beads_dir),
        env_name("beadboard_url"): beadboard_url,
        # The pod copies the rendered server-mode metadata.json (bd -> Dolt sql-server at
        # dolt.beads-server.svc.cluster.local) into BEADS_DB before bd runs. Here BEADS_DB is
        # an embedded-mode database whose own metadata.json says so; copying over it would
        # send bd to a server that does not exist. Blank = unset for the jobs, so nothing is
        # copied and the database keeps its own metadata.json.
        env_name("beads_metadata_file"): "",
    }


def fake_secrets(pod_spec: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """A made-up value for every secretKeyRef in the pod's containers (the Dolt password)."""
    secrets: dict[str, dict[str, str]] = {}
    for container in pod_spec["containers"]:
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secrets.setdefault(ref["name"], {})[ref["key"]] = f"test-{ref['key']}"
    return secrets
