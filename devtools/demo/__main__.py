"""`make demo`: `pulumi up` of the `local` stack, then its rendered CronJobs run here, no cluster.

1. The real Pulumi engine (Automation API, inline program = the project's __main__.py)
   deploys the `local` stack, whose Kubernetes provider writes YAML manifests instead of
   applying them (Pulumi.local.yaml). State and manifests go to .pulumi-local/demo/.
2. The rendered dispatcher and reaper containers run as local processes, as their pod
   specs say (ConfigMap volumes, env and envFrom, the Dolt password secretKeyRef, working
   dir) in a virtualenv holding only pydantic, like the agent image, against a fresh
   embedded-mode beads database made with the real bd 1.0.2 and a loopback BeadBoard stand-in.
3. The kill switch: `dispatcherEnabled=false` + `pulumi up`, and a run that starts anyway.

Prints the engine's output, what BeadBoard received, and what happened to each bead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from components.names import DISPATCHER_NAME, REAPER_NAME, RUNTIME_CONFIG_NAME
from devtools.localdeploy.stack import (
    LOCAL_DIR,
    LocalStack,
    Manifests,
    fake_secrets,
    local_run_overrides,
)
from devtools.localservices.bd import RealBd, real_bd_path
from devtools.localservices.beadboard import BeadBoardStub
from devtools.paths import ROOT
from devtools.pods.runner import make_image_like_venv, materialise, pinned
from jobs.settings import env_name

DEMO_DIR = LOCAL_DIR / "demo"
IMAGE_VENV = LOCAL_DIR / "image-venv"


def rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def heading(text: str) -> None:
    print(f"\n=== {text}")


def image_python() -> Path:
    """The pydantic-only virtualenv standing in for the agent image; reused while its pin holds."""
    marker = IMAGE_VENV / "requirement.txt"
    python = IMAGE_VENV / "bin" / "python"
    if python.exists() and marker.exists() and marker.read_text() == pinned("pydantic"):
        return python
    print(f"(creating {rel(IMAGE_VENV)} with only {pinned('pydantic')})")
    python = make_image_like_venv(IMAGE_VENV)
    marker.write_text(pinned("pydantic"))
    return python


def run_container(
    manifests: Manifests,
    cronjob: str,
    scratch: Path,
    python: Path,
    overrides: Mapping[str, str],
) -> int:
    """One run of the CronJob's container in a fresh pod root (a new pod: new emptyDir)."""
    pod_spec = manifests.pod_spec(cronjob)
    root = Path(tempfile.mkdtemp(prefix=f"{cronjob}-", dir=scratch))
    pod = materialise(pod_spec, manifests.configmaps(), root, secrets=fake_secrets(pod_spec))
    shown = " ".join(pod_spec["containers"][0]["command"])
    print(f"\n$ {shown}    # container of CronJob {cronjob}")
    completed = pod.run(python, overrides)
    for line in (completed.stdout + completed.stderr).splitlines():
        print(f"  {line}")
    print(f"  (exit {completed.returncode})")
    return completed.returncode


def show_beads(bd: RealBd, beads: Mapping[str, str]) -> None:
    for label, bead_id in beads.items():
        bead = bd.show(bead_id)
        print(f"- {bead_id} [{label}]: status={bead['status']} assignee={bead.get('assignee', '')}")
        for line in str(bead.get("notes", "")).splitlines():
            print(f"    note: {line}")
        for comment in bead.get("comments") or []:
            print(f"    comment ({comment['author']}): {comment['text']}")


def suspend_flags(manifests: Manifests) -> str:
    flags = (
        f"{name} suspend={manifests.cronjob(name)['spec']['suspend']}"
        for name in (DISPATCHER_NAME, REAPER_NAME)
    )
    switch = env_name("dispatcher_enabled")
    enabled = manifests.configmaps()[RUNTIME_CONFIG_NAME]["data"][switch]
    return ", ".join([*flags, f"{switch}={enabled}"])


def main() -> int:
    binary = real_bd_path()
    if binary is None:
        print("BD_REAL is not set: run this through `make demo`, which builds bd first.")
        return 2

    heading("1. pulumi up of the `local` stack (Automation API, inline program = __main__.py)")
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    stack = LocalStack.create(DEMO_DIR, output=print)
    stack.up()
    manifests = stack.manifests()
    print(f"\nRendered manifests in {rel(stack.render_dir)}:")
    for path in sorted(stack.render_dir.rglob("*.yaml")):
        print(f"  {path.relative_to(stack.render_dir)}")

    python = image_python()
    with (
        tempfile.TemporaryDirectory(prefix="beads-demo-") as tmp,
        BeadBoardStub() as board,
    ):
        scratch = Path(tmp)
        bd = RealBd(binary, scratch / "project").init(prefix="demo")
        beads = {
            "urgent, with acceptance criteria": bd.create(
                "Fix the flaky login test",
                priority=0,
                assignee="agent",
                acceptance="test passes 20 times in a row",
            ),
            "normal, with acceptance criteria": bd.create(
                "Document the backup job",
                priority=2,
                assignee="agent",
                acceptance="runbook has a backup section",
            ),
            "no acceptance criteria (never dispatched)": bd.create(
                "Think about caching", priority=1, assignee="agent"
            ),
            "assigned to a human (never touched)": bd.create(
                "Review the roadmap", priority=0, assignee="alice", acceptance="done"
            ),
        }
        stuck = bd.create("Agent run that died", priority=2, assignee="agent", acceptance="x")
        bd.update(stuck, "--status", "in_progress")
        # Its agent stopped 31 minutes ago (bd import rewrites the bead's stamps).
        bd.backdate(stuck, 31)
        beads["in_progress, no update for 31 min (reaper)"] = stuck

        overrides = local_run_overrides(binary, bd.beads_dir, board.url)
        heading("2. The rendered CronJobs' containers, run here")
        print(f"beads database (embedded mode, real bd): {bd.beads_dir}")
        print(f"BeadBoard stand-in: {board.url}")
        print("env overrides on top of the rendered pod spec:")
        for name, value in overrides.items():
            print(f"  {name}={value}")
        # One agent slot: each run dispatches one of the two eligible beads, the third finds
        # none left (one bd call, no HTTP request).
        for _ in range(3):
            run_container(manifests, DISPATCHER_NAME, scratch, python, overrides)
        # The two beads just dispatched are fresh; the one whose agent died is not.
        run_container(manifests, REAPER_NAME, scratch, python, overrides)

        print("\nWhat BeadBoard received:")
        for request in board.requests:
            print(f"  {request.method} {request.path} {request.text if request.body else ''}")
        print("\nBeads afterwards:")
        show_beads(bd, beads)

        heading("3. Kill switch: pulumi config set dispatcherEnabled false && pulumi up")
        waiting = bd.create("Arrives while paused", priority=0, assignee="agent", acceptance="x")
        stack.set_config("dispatcherEnabled", "false")
        stack.up()
        paused = stack.manifests()
        print(f"\nRendered: {suspend_flags(paused)}")
        board.clear()
        print("A run that starts anyway (kubectl create job --from=cronjob/...):")
        run_container(paused, DISPATCHER_NAME, scratch, python, overrides)
        print(f"BeadBoard requests during the paused run: {len(board.requests)}")
        show_beads(bd, {"assigned to agent while paused": waiting})
    print(
        f"\nThe stack (left paused) and its manifests stay in {rel(DEMO_DIR)}/;"
        " `python -m devtools.localdeploy up|preview|config-set KEY VALUE` works on it."
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        sys.exit(1)
