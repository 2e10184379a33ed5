"""`pulumi up` of the `cluster` stack into a real API server (server-side apply, Pod Security
"restricted"), and the CronJobs run by the real CronJob, Job and scheduler controllers,
their pods by the pod executor, against bd in server mode (a real `dolt sql-server`) and a
BeadBoard stand-in.

The tests share one control plane and one `pulumi up` (see conftest.py); each brings the
stack to the config it needs first (`deployed`, `windowed`), so none depends on another's
leftovers. The scheduled-run tests wait for real minutes: everything else uses
`kubectl create job --from=cronjob/...`.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from pulumi.automation import EngineEvent, OpType, StepEventMetadata

from components.bundle import CONFIGMAP_LIMIT_BYTES, VENDOR_ZIP_NAME, Bundle, build_bundle
from components.names import (
    APP_NAME,
    CHECKSUM_ANNOTATION,
    RUNTIME_CONFIG_NAME,
    VENDOR_NAME,
    VERSION_LABEL,
)
from devtools.localcluster import Cluster
from devtools.localservices.beadboard import AGENT_DISPATCH, BeadBoardStub
from devtools.localservices.dolt import DOLT_PASSWORD
from devtools.pods.kube import Api
from tests.cluster.conftest import (
    DISPATCHER,
    DOLT_SECRET,
    NODE_NAME,
    REAPER,
    SCHEDULED_ANNOTATION,
    WINDOW_SECONDS,
    DeployedStack,
    ExecutorProcess,
    Jobs,
    Run,
    ServerBeads,
    job_finished,
    posts_for,
    seconds_to_next_minute,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

OURS = f"app.kubernetes.io/name={APP_NAME}"
# A scheduled run is due at the top of a minute; the controller, the scheduler, the
# executor and bd each add a little before it is done.
SCHEDULE_WAIT = 60 + 60


def live(cluster: Cluster, *args: str) -> dict[str, Any]:
    """`kubectl get ... -o json` of the namespace."""
    document: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return document


def live_cronjob(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return live(cluster, "-n", namespace, "cronjob", name)


def dispatched_by(run: Run) -> list[str]:
    done = [e for e in run.events if e["event"] == "tick.done"]
    return list(done[-1].get("dispatched") or []) if done else []


def scheduled_time(run: Run) -> datetime:
    stamp = run.job["metadata"]["annotations"][SCHEDULED_ANNOTATION]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def scheduled_run_that_dispatched(jobs: Jobs, bead: str) -> Run:
    return wait_until(
        f"a Job the CronJob controller created on schedule to dispatch {bead}",
        lambda: next(
            (r for r in jobs.scheduled_runs(DISPATCHER) if bead in dispatched_by(r)), None
        ),
        timeout=SCHEDULE_WAIT,
        interval=1.0,
    )


def assert_dispatched_once(beads: ServerBeads, board: BeadBoardStub, bead: str) -> None:
    state = beads.show(bead)
    assert state["status"] == "in_progress", state
    assert state["notes"].splitlines()[-1].startswith("beads-dispatcher claimed at "), state
    assert beads.comments(bead)[-1].startswith("dispatched: job="), state
    assert posts_for(board, bead) == 1


def assert_succeeded(run: Run) -> None:
    assert run.pod_phase == "Succeeded", (run.pod.get("status"), run.output)
    assert run.exit_code == 0, run.output


# ---------------------------------------------------------------------------------------
# 1-2: the deploy
# ---------------------------------------------------------------------------------------


def test_up_applies_every_object_to_the_api_server(
    cluster_stack: DeployedStack, cluster: Cluster, namespace: str
) -> None:
    result = cluster_stack.first_up
    # The stack, the component, four ConfigMaps, a ServiceAccount, two CronJobs.
    assert result.summary.resource_changes == {"create": 9}, result.summary.resource_changes
    assert {name: out.value for name, out in result.outputs.items()} == {
        "dispatcherCronJob": DISPATCHER,
        "reaperCronJob": REAPER,
        "dispatcherSchedule": "* * * * *",
        "reaperSchedule": "0 0 1 1 *",
        "suspended": False,
    }
    objects = live(
        cluster,
        *("-n", namespace, "cronjob,configmap,serviceaccount", "-l", OURS),
        "--show-managed-fields",
    )
    names = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects["items"])
    assert names == [
        "ConfigMap/beads-autodispatch-bd-config",
        "ConfigMap/beads-autodispatch-code",
        "ConfigMap/beads-autodispatch-runtime",
        "ConfigMap/beads-autodispatch-vendor",
        f"CronJob/{DISPATCHER}",
        f"CronJob/{REAPER}",
        "ServiceAccount/beads-autodispatch",
    ]
    # Applied by the provider with server-side apply, not rendered.
    for item in objects["items"]:
        managers = {(m["manager"], m["operation"]) for m in item["metadata"]["managedFields"]}
        assert any(
            manager.startswith("pulumi-kubernetes") and operation == "Apply"
            for manager, operation in managers
        ), (item["metadata"]["name"], managers)


def test_live_cronjobs_carry_the_configured_schedules_and_deadlines(
    deployed: DeployedStack, cluster: Cluster, namespace: str
) -> None:
    expected = {
        DISPATCHER: (deployed.base["dispatcherSchedule"], 45),
        REAPER: (deployed.base["reaperSchedule"], 300),
    }
    for name, (schedule, deadline) in expected.items():
        spec = live_cronjob(cluster, namespace, name)["spec"]
        assert spec["schedule"] == schedule
        assert spec["suspend"] is False
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == 60
        assert spec["timeZone"] == "Etc/UTC"
        job = spec["jobTemplate"]["spec"]
        assert job["activeDeadlineSeconds"] == deadline
        assert job["backoffLimit"] == 0
        [container] = job["template"]["spec"]["containers"]
        [password] = [e for e in container["env"] if "valueFrom" in e]
        assert password["valueFrom"]["secretKeyRef"] == {"name": DOLT_SECRET, "key": "password"}


# ---------------------------------------------------------------------------------------
# Pulumi's view of the live objects
# ---------------------------------------------------------------------------------------


def test_preview_right_after_up_reports_no_changes(deployed: DeployedStack) -> None:
    ops = deployed.stack.preview(diff=True).change_summary
    assert ops == {OpType.SAME: 9}, ops


def test_refresh_is_clean(deployed: DeployedStack) -> None:
    """Refresh reads every live object back (the controllers have written CronJob status
    meanwhile); afterwards the program still matches the cluster."""
    result = deployed.stack.refresh()
    assert result.summary.result == "succeeded"
    changes = result.summary.resource_changes or {}
    assert set(changes) <= {"same", "update"}, changes
    assert sum(changes.values()) == 9, changes
    assert deployed.stack.preview(diff=True).change_summary == {OpType.SAME: 9}


def test_a_code_change_diffs_only_the_code_configmap_and_the_pod_template_checksum(
    deployed: DeployedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change to one jobs/ file, previewed against the live objects: the code ConfigMap's
    data, and in each CronJob nothing but the pod template's checksum annotation."""

    def changed_code() -> Bundle:
        bundle = build_bundle()
        sources = dict(bundle.sources)
        sources["dispatch.py"] += "\n# a code change\n"
        return dataclasses.replace(bundle, sources=sources)

    # The inline program runs in this process, so the component builds this bundle instead.
    monkeypatch.setattr("components.auto_dispatch.build_bundle", changed_code)
    steps: list[StepEventMetadata] = []

    def collect(event: EngineEvent) -> None:
        if event.resource_pre_event is not None:
            steps.append(event.resource_pre_event.metadata)

    preview = deployed.stack.stack.preview(diff=True, on_event=collect, color="never")
    assert preview.change_summary == {OpType.SAME: 6, OpType.UPDATE: 3}, preview.stdout
    updated = {
        step.urn.rsplit("::", 1)[1]: sorted(step.detailed_diff or {})
        for step in steps
        if step.op == OpType.UPDATE
    }
    shown = (updated, preview.stdout)
    code, dispatcher, reaper = (f"{APP_NAME}-{part}" for part in ("code", "dispatcher", "reaper"))
    assert set(updated) == {code, dispatcher, reaper}, shown
    [changed_file] = updated[code]
    assert changed_file.startswith("data") and "dispatch.py" in changed_file, shown
    for cronjob in (dispatcher, reaper):
        # The pod template's checksum, and the version label (the code is the version) on
        # the CronJob, its Job template and its pod template.
        paths = set(updated[cronjob])
        [checksum] = [p for p in paths if CHECKSUM_ANNOTATION in p]
        assert checksum.startswith("spec.jobTemplate.spec.template.metadata.annotations"), shown
        versions = {p for p in paths if VERSION_LABEL in p}
        assert len(versions) == 3 and paths == versions | {checksum}, shown


# ---------------------------------------------------------------------------------------
# What the API server accepts
# ---------------------------------------------------------------------------------------


def _pod_from_template(cronjob: dict[str, Any], name: str) -> dict[str, Any]:
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
        "spec": template["spec"],
    }


def test_pod_security_restricted_admits_our_pod_and_rejects_a_weakened_one(
    deployed: DeployedStack, cluster: Cluster, namespace: str
) -> None:
    cronjob = live_cronjob(cluster, namespace, DISPATCHER)
    ours = _pod_from_template(cronjob, "admission-probe")
    accepted = cluster.kubectl(
        "-n", namespace, "create", "--dry-run=server", "-f", "-",
        stdin=json.dumps(ours), check=False,
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert "warning" not in accepted.stderr.lower(), accepted.stderr

    weakened = copy.deepcopy(ours)
    [container] = weakened["spec"]["containers"]
    del weakened["spec"]["securityContext"]["runAsNonRoot"]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    container["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    rejected = cluster.kubectl(
        "-n", namespace, "create", "--dry-run=server", "-f", "-",
        stdin=json.dumps(weakened), check=False,
    )  # fmt: skip
    assert rejected.returncode != 0
    message = rejected.stderr
    assert 'violates PodSecurity "restricted:latest"' in message, message
    for field in ("allowPrivilegeEscalation != false", "NET_ADMIN", "runAsNonRoot != true"):
        assert field in message, message


def test_largest_configmap_is_accepted_whole(
    deployed: DeployedStack, api: Api, namespace: str, record_property: Any
) -> None:
    """The vendor bundle is the biggest object; the API server holds it byte for byte."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    listed = api.get(path, query={"labelSelector": OURS})["items"]

    def payload_bytes(cm: dict[str, Any]) -> int:
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data |= {k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()}
        return sum(len(k) + len(v) for k, v in data.items())

    sizes = {cm["metadata"]["name"]: payload_bytes(cm) for cm in listed}
    largest = max(sizes, key=sizes.__getitem__)
    assert largest == VENDOR_NAME, sizes
    served = next(cm for cm in listed if cm["metadata"]["name"] == VENDOR_NAME)
    stored_json = len(json.dumps(served, separators=(",", ":")).encode())
    record_property("configmap_bytes", sizes)
    record_property("vendor_object_json_bytes", stored_json)
    print(f"ConfigMap payload bytes: {sizes}; {VENDOR_NAME} as served: {stored_json} bytes JSON")
    assert stored_json < CONFIGMAP_LIMIT_BYTES
    assert base64.b64decode(served["binaryData"][VENDOR_ZIP_NAME]) == build_bundle().vendor_zip


# ---------------------------------------------------------------------------------------
# 3-4: the jobs, run by the controllers
# ---------------------------------------------------------------------------------------


def test_dispatch_on_schedule_and_by_hand_posts_each_bead_once(
    deployed: DeployedStack,
    cluster: Cluster,
    beads: ServerBeads,
    board: BeadBoardStub,
    jobs: Jobs,
) -> None:
    on_schedule = beads.create("dispatched by the schedule")
    run = scheduled_run_that_dispatched(jobs, on_schedule)
    assert_succeeded(run)
    owner = run.job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("CronJob", DISPATCHER, True)
    assert run.pod["spec"]["nodeName"] == NODE_NAME
    assert run.event("lock.acquired")["lock"].startswith("GET_LOCK('beads-autodispatch:")
    assert_dispatched_once(beads, board, on_schedule)

    # By hand, away from the next scheduled run, so that this Job is the one that finds it.
    if seconds_to_next_minute() < 25:
        boundary = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        wait_until(
            f"the run scheduled for {boundary:%H:%M} to finish",
            lambda: any(scheduled_time(r) >= boundary for r in jobs.scheduled_runs(DISPATCHER)),
            timeout=SCHEDULE_WAIT,
            interval=1.0,
        )
    by_hand = beads.create("dispatched by a Job made by hand")
    manual = jobs.create_from(cluster, DISPATCHER, "dispatch-by-hand")
    assert_succeeded(manual)
    assert not manual.scheduled
    assert dispatched_by(manual) == [by_hand], manual.output
    assert_dispatched_once(beads, board, by_hand)
    assert posts_for(board, on_schedule) == 1
    sent = Counter(r.json["taskId"] for r in board.requests_to(AGENT_DISPATCH))
    assert all(count == 1 for count in sent.values()), sent


def test_reaper_job_blocks_a_stale_agent_bead(
    deployed: DeployedStack, cluster: Cluster, beads: ServerBeads, jobs: Jobs
) -> None:
    # No acceptance criteria: no dispatcher run can take it before it is in progress.
    stale = beads.create("an agent run that died", acceptance=None)
    beads.run("update", stale, "--status", "in_progress")
    beads.backdate(stale, 45)
    run = jobs.create_from(cluster, REAPER, "reap-by-hand")
    assert_succeeded(run)
    assert stale in run.event("tick.done")["blocked"], run.output
    state = beads.show(stale)
    assert state["status"] == "blocked", state
    note = state["notes"].splitlines()[-1]
    assert note.startswith("beads-reaper: no progress for 4"), note
    assert "(threshold 30m)" in note, note


# ---------------------------------------------------------------------------------------
# 5: the kill switch
# ---------------------------------------------------------------------------------------


def test_kill_switch_suspends_both_cronjobs_and_a_run_by_hand_does_nothing(
    deployed: DeployedStack,
    cluster: Cluster,
    namespace: str,
    api: Api,
    beads: ServerBeads,
    board: BeadBoardStub,
    jobs: Jobs,
) -> None:
    paused = deployed.apply({"dispatcherEnabled": "false"})
    flipped_at = datetime.now(UTC)
    assert paused.outputs["suspended"].value is True
    for name in (DISPATCHER, REAPER):
        assert live_cronjob(cluster, namespace, name)["spec"]["suspend"] is True
    runtime = api.get(f"/api/v1/namespaces/{namespace}/configmaps/{RUNTIME_CONFIG_NAME}")
    assert runtime["data"]["DISPATCHER_ENABLED"] == "false"

    waiting = beads.create("waits while paused")
    run = jobs.create_from(cluster, DISPATCHER, "dispatch-while-paused")
    assert_succeeded(run)
    assert [e["event"] for e in run.events] == ["run.start", "run.paused"], run.output
    assert beads.show(waiting)["status"] == "open"
    assert posts_for(board, waiting) == 0

    # The next due time passes with no Job (the controller creates one within a second or
    # two of the minute when it is not suspended).
    due = flipped_at.replace(second=0, microsecond=0) + timedelta(minutes=1)

    def scheduled_since_flip() -> list[str]:
        return [
            job["metadata"]["name"]
            for job in jobs.owned_by(DISPATCHER)
            if (stamp := (job["metadata"].get("annotations") or {}).get(SCHEDULED_ANNOTATION))
            and datetime.fromisoformat(stamp.replace("Z", "+00:00")) > flipped_at
        ]

    wait_until(
        f"{due:%H:%M:%S} + 10 s to pass with no scheduled Job",
        lambda: scheduled_since_flip() or datetime.now(UTC) > due + timedelta(seconds=10),
        timeout=75,
    )
    assert scheduled_since_flip() == []

    resumed = deployed.apply({"dispatcherEnabled": "true"})
    assert resumed.outputs["suspended"].value is False
    for name in (DISPATCHER, REAPER):
        assert live_cronjob(cluster, namespace, name)["spec"]["suspend"] is False
    run = scheduled_run_that_dispatched(jobs, waiting)
    assert_succeeded(run)
    assert_dispatched_once(beads, board, waiting)


def test_job_controller_deadline_stops_a_window_run_with_sigterm(
    windowed: DeployedStack,
    cluster: Cluster,
    namespace: str,
    jobs: Jobs,
    executor: ExecutorProcess,
) -> None:
    """A Job past its activeDeadlineSeconds: the Job controller deletes the pod, the
    executor sends SIGTERM and waits out the grace period, the run stops cleanly."""
    cronjob = live_cronjob(cluster, namespace, DISPATCHER)
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    deadline = 8
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "past-deadline",
            "labels": template["metadata"].get("labels", {}),
            # Owned by the CronJob like `kubectl create job --from`, so destroy takes it along.
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": DISPATCHER,
                    "uid": cronjob["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": template["spec"] | {"activeDeadlineSeconds": deadline},
    }
    cluster.kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(job))
    pod = wait_until("its pod", lambda: jobs.pod_of("past-deadline"), timeout=30)
    pod_name = pod["metadata"]["name"]
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs/past-deadline"

    def failed_condition() -> dict[str, Any] | None:
        conditions = jobs.api.get(path).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Failed"), None)

    failed = wait_until("the Job to fail", failed_condition, timeout=deadline + 40)
    assert failed["reason"] == "DeadlineExceeded", failed
    # The executor confirmed the graceful deletion (terminal status, then delete with grace
    # 0); the pod is gone once the Job controller has let go of it (tracking finalizer).
    wait_until(f"pod {pod_name} to be deleted", lambda: jobs.pod_of("past-deadline") is None, 30)
    # The run got SIGTERM (not SIGKILL) long before its window or its grace period ran out,
    # and stopped cleanly.
    run = Run(jobs.api.get(path), pod, executor.pod_log(namespace, pod_name))
    assert run.event("run.stopping")["detail"].startswith("SIGTERM"), run.output
    assert run.event("tick.done")["exit_code"] == 0, run.output
    grace = template["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    log = executor.log_text()
    assert f"{namespace}/{pod_name}: SIGTERM, grace {grace}s" in log, log
    assert f"{namespace}/{pod_name}: exited 0" in log, log
    assert f"{namespace}/{pod_name}: deletion confirmed" in log, log
    assert f"{namespace}/{pod_name}: SIGKILL" not in log, log


def test_kill_switch_reaches_a_running_watch_window(
    windowed: DeployedStack,
    cluster: Cluster,
    namespace: str,
    jobs: Jobs,
    executor: ExecutorProcess,
) -> None:
    """The runtime ConfigMap changes on the live object, the executor refreshes the mounted
    file, and the window run sees `run.paused` at its next poll, well before its end."""
    cluster.kubectl("-n", namespace, "create", "job", f"--from=cronjob/{DISPATCHER}", "window")
    pod = wait_until("the window Job's pod", lambda: jobs.pod_of("window"), timeout=30)
    pod_name = pod["metadata"]["name"]
    wait_until(
        "the window run's first poll",
        lambda: '"queue.read"' in executor.pod_log(namespace, pod_name),
        timeout=30,
    )
    windowed.apply({"dispatcherEnabled": "false"})
    flipped = datetime.now(UTC).replace(microsecond=0)
    run = jobs.wait("window", timeout=WINDOW_SECONDS + 30)
    assert_succeeded(run)
    events = [e["event"] for e in run.events]
    # Paused at a poll, not at the start: at least one poll read the queue first. The switch
    # is looked at before each poll, so a flip that lands between polls ends the run with
    # one poll done (`polls` counts polls made, not switch checks).
    assert events[0] == "run.start" and events[-2:] == ["run.paused", "tick.done"], run.output
    assert "queue.read" in events[1:-2], run.output
    assert run.event("tick.done")["outcome"] == "paused", run.output
    assert run.event("tick.done")["polls"] >= 1, run.output
    [status] = run.pod["status"]["containerStatuses"]
    terminated = status["state"]["terminated"]
    started = datetime.fromisoformat(terminated["startedAt"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(terminated["finishedAt"].replace("Z", "+00:00"))
    assert finished - started < timedelta(seconds=WINDOW_SECONDS), (started, finished)
    # Within a refresh (2 s) and a poll (2 s) of the live ConfigMap changing, plus slack.
    assert finished <= flipped + timedelta(seconds=10), (flipped, finished)
    refreshed = f"{namespace}/{pod_name}: refreshed configMap {RUNTIME_CONFIG_NAME}"
    assert refreshed in executor.log_text()


# ---------------------------------------------------------------------------------------
# The pod executor's own contract (a bare pod, no stack needed)
# ---------------------------------------------------------------------------------------

_RESTRICTED_CONTAINER = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
}
_RESTRICTED_POD = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}
_PROBE = """
import json, os, shutil, sys, importlib.util as u
print(json.dumps({
    "prefix": sys.prefix,
    "pydantic": u.find_spec("pydantic") is not None,
    "httpx": u.find_spec("httpx") is not None,
    "bd": shutil.which("bd"),
    "cwd": os.getcwd(),
    "env": {k: os.environ.get(k) for k in ("FROM_VALUE", "FROM_SECRET", "CFG_GREETING",
                                           "EXPANDED", "HOME")},
    "mounted": open(os.path.join(os.environ["MOUNTED"], "greeting.txt")).read(),
    "argv": sys.argv[1:],
}), flush=True)
"""


def _bare_pod(name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            **_RESTRICTED_POD,
            **spec,
            "containers": [
                {"name": "probe", "image": "not-pulled:anything"}
                | container
                | _RESTRICTED_CONTAINER
            ],
        },
    }


def _pod_phase(api: Api, namespace: str, name: str) -> str | None:
    pod = api.get_optional(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return None if pod is None else str(pod.get("status", {}).get("phase"))


def _terminal_phase(api: Api, namespace: str, name: str) -> str | None:
    phase = _pod_phase(api, namespace, name)
    return phase if phase in ("Succeeded", "Failed") else None


def test_executor_runs_a_pod_as_its_spec_says(
    cluster: Cluster, api: Api, namespace: str, executor: ExecutorProcess
) -> None:
    """Env from values, a Secret and a ConfigMap (with prefix), `$(VAR)` expansion, a
    ConfigMap volume with items, workingDir; `python3` is the image's (pydantic, no
    httpx), `bd` is on PATH. All read from the API server."""
    cluster.kubectl(
        "-n", namespace, "create", "configmap", "executor-probe", "--from-literal=GREETING=hi"
    )  # fmt: skip
    container = {
        "command": ["python3", "-c", _PROBE],
        "args": ["$(FROM_VALUE)", "$$(FROM_VALUE)", "$(UNDEFINED)"],
        "workingDir": "/work",
        "env": [
            {"name": "FROM_VALUE", "value": "plain"},
            {
                "name": "FROM_SECRET",
                "valueFrom": {"secretKeyRef": {"name": DOLT_SECRET, "key": "password"}},
            },
            {"name": "EXPANDED", "value": "$(FROM_VALUE)-$(CFG_GREETING)"},
            {"name": "MOUNTED", "value": "/etc/probe"},
        ],
        "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "executor-probe"}}],
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/etc/probe", "readOnly": True},
            {"name": "work", "mountPath": "/work"},
        ],
    }
    volumes = [
        {
            "name": "cfg",
            "configMap": {
                "name": "executor-probe",
                "items": [{"key": "GREETING", "path": "greeting.txt"}],
            },
        },
        {"name": "work", "emptyDir": {}},
    ]
    pod = _bare_pod("executor-probe", container, volumes=volumes)
    cluster.kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(pod))
    phase = wait_until(
        "the probe pod to finish",
        lambda: _terminal_phase(api, namespace, "executor-probe"),
        timeout=60,
    )
    output = executor.pod_log(namespace, "executor-probe")
    assert phase == "Succeeded", output
    seen = json.loads(output.splitlines()[-1])
    assert seen["pydantic"] is True and seen["httpx"] is False, seen
    assert seen["bd"] is not None and seen["bd"].endswith("/bin/bd"), seen
    assert seen["env"]["FROM_VALUE"] == "plain"
    assert seen["env"]["FROM_SECRET"] == DOLT_PASSWORD
    assert seen["env"]["CFG_GREETING"] == "hi"
    assert seen["env"]["EXPANDED"] == "plain-hi"
    assert seen["mounted"] == "hi"
    assert seen["argv"] == ["plain", "$(FROM_VALUE)", "$(UNDEFINED)"]
    assert seen["cwd"].endswith("/volumes/work"), seen


def test_executor_kills_a_container_that_ignores_sigterm_after_its_grace(
    cluster: Cluster, api: Api, namespace: str, executor: ExecutorProcess
) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring SIGTERM', flush=True); time.sleep(600)"
    )
    pod = _bare_pod(
        "ignores-sigterm",
        {"command": ["python3", "-c", stubborn]},
        terminationGracePeriodSeconds=2,
    )
    cluster.kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(pod))
    wait_until(
        "the stubborn pod to run",
        lambda: "ignoring SIGTERM" in executor.pod_log(namespace, "ignores-sigterm"),
        timeout=60,
    )
    deleted = datetime.now(UTC)
    cluster.kubectl("-n", namespace, "delete", "pod", "ignores-sigterm", "--wait=false")
    wait_until(
        "the pod to be gone",
        lambda: _pod_phase(api, namespace, "ignores-sigterm") is None,
        timeout=30,
    )
    gone = datetime.now(UTC)
    log = executor.log_text()
    assert f"{namespace}/ignores-sigterm: SIGTERM, grace 2s" in log, log
    assert f"{namespace}/ignores-sigterm: SIGKILL after 2s" in log, log
    assert f"{namespace}/ignores-sigterm: exited -9" in log, log
    assert timedelta(seconds=2) <= gone - deleted < timedelta(seconds=10), (deleted, gone)


# ---------------------------------------------------------------------------------------
# Forbid: a schedule that comes due while a run is still going is skipped
# ---------------------------------------------------------------------------------------

PROBE = "forbid-probe"
PROBE_LABELS = {"app.kubernetes.io/name": PROBE}
# Longer than the one-minute interval: check_timing refuses such a config for our stack
# (a run must end before the next is due), so the probe is a copy of the live dispatcher
# CronJob with only the run's length changed, made with kubectl rather than `pulumi up`.
PROBE_WINDOW_SECONDS = 90
PROBE_DEADLINE_SECONDS = 150


def _probe_cronjob(ours: dict[str, Any]) -> dict[str, Any]:
    """Our dispatcher CronJob (schedule `* * * * *`, Forbid, startingDeadlineSeconds as
    deployed) whose runs watch an empty queue for 90 s, blind to the kill switch (the
    kill-switch tests flip it while this runs) and to every other test's beads."""
    spec = copy.deepcopy(ours["spec"])
    spec["successfulJobsHistoryLimit"] = 10
    job = spec["jobTemplate"]
    job["metadata"] = {"labels": PROBE_LABELS}
    job["spec"]["activeDeadlineSeconds"] = PROBE_DEADLINE_SECONDS
    template = job["spec"]["template"]
    template["metadata"]["labels"] = PROBE_LABELS
    [container] = template["spec"]["containers"]
    overrides = {
        "AGENT_ASSIGNEE": PROBE,
        "DISPATCHER_ENABLED": "true",
        "DISPATCHER_WINDOW_SECONDS": str(PROBE_WINDOW_SECONDS),
        "POLL_INTERVAL_SECONDS": "10",
    }
    container["env"] = [
        e for e in container["env"] if e["name"] not in ("RUNTIME_CONFIG_DIR", *overrides)
    ] + [{"name": name, "value": value} for name, value in overrides.items()]
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": PROBE, "labels": PROBE_LABELS},
        "spec": spec,
    }


@pytest.fixture(scope="module", autouse=True)
def forbid_probe(cluster_stack: DeployedStack, cluster: Cluster, namespace: str) -> Iterator[str]:
    """Started with the module, so that the minutes the probe needs pass while the other
    tests run; its test, near the end, reads what the controllers made of it."""
    ours = live_cronjob(cluster, namespace, DISPATCHER)
    assert ours["spec"]["schedule"] == "* * * * *", ours["spec"]
    cluster.kubectl(
        "-n", namespace, "create", "-f", "-", stdin=json.dumps(_probe_cronjob(ours))
    )  # fmt: skip
    yield PROBE
    cluster.kubectl(
        "-n", namespace, "delete", "cronjob", PROBE, "--cascade=foreground", "--wait=false",
        check=False,
    )  # fmt: skip


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_forbid_skips_a_schedule_due_while_a_run_is_active(
    forbid_probe: str, cluster: Cluster, namespace: str, jobs: Jobs
) -> None:
    def already_active() -> list[dict[str, Any]]:
        listed = live(
            cluster, "-n", namespace, "events",
            "--field-selector", f"involvedObject.name={forbid_probe},reason=JobAlreadyActive",
        )["items"]  # fmt: skip
        return listed or []

    # The first run starts at the top of a minute and is still going at the next one.
    events = wait_until(
        "the CronJob controller to skip a schedule (event JobAlreadyActive)",
        already_active,
        timeout=PROBE_DEADLINE_SECONDS + 60,
        interval=2.0,
    )
    first = min(_stamp(e.get("firstTimestamp") or e["eventTime"]) for e in events)
    assert {e["involvedObject"]["kind"] for e in events} == {"CronJob"}, events
    skipped_at = first

    runs = sorted(jobs.owned_by(forbid_probe), key=lambda j: j["metadata"]["creationTimestamp"])
    spans = [
        (
            job["metadata"]["name"],
            _stamp(job["metadata"]["creationTimestamp"]),
            _stamp(job["status"]["completionTime"])
            if job.get("status", {}).get("completionTime")
            else None,
        )
        for job in runs
    ]
    # The run that was going when the schedule came due, and it ran past the minute.
    active = [s for s in spans if s[1] <= skipped_at and (s[2] is None or s[2] >= skipped_at)]
    assert len(active) == 1, (skipped_at, spans)
    assert active[0][1] <= skipped_at.replace(second=0) <= skipped_at, (skipped_at, spans)
    # Never two at once: each Job was created after the one before it had completed.
    for (before, _, completed), (after, created, _) in pairwise(spans):
        assert completed is not None and created >= completed, (before, after, spans)
    # Runs the controller did make went the whole window and succeeded.
    finished = [j for j in runs if job_finished(j)]
    assert finished, spans
    for job in finished:
        conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
        assert conditions.get("Complete") == "True", job["status"]


# ---------------------------------------------------------------------------------------
# Last: destroy
# ---------------------------------------------------------------------------------------


def test_destroy_leaves_nothing_of_ours(
    cluster_stack: DeployedStack, cluster: Cluster, namespace: str
) -> None:
    result = cluster_stack.stack.destroy()
    cluster_stack.destroyed = True
    assert result.summary.result == "succeeded"

    def leftovers() -> list[str]:
        listed = cluster.kubectl(
            "-n", namespace, "get", "all,cm,sa,netpol", "-l", OURS, "-o", "name"
        ).stdout.split()  # fmt: skip
        return listed

    # Jobs and pods go with their CronJob through the garbage collector, a little later.
    wait_until(f"nothing labelled {OURS} left", lambda: leftovers() == [], timeout=60)
