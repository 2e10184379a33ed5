"""The checkov findings this design accepts, as annotations carried by the manifests."""

from __future__ import annotations

from components.config import BeadsAutoDispatchArgs


def image_tag(image: str) -> str:
    """The tag of an image reference ("" when untagged or pinned by digest only)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def scan_exceptions(settings: BeadsAutoDispatchArgs) -> dict[str, str]:
    """The checkov findings this design accepts, as annotations on each CronJob.

    checkov reads `checkov.io/skip<N>: <check>=<reason>`, so the reason travels with the
    manifest (tools/scan-manifests.sh fails on anything else). Config-dependent findings
    are excepted only when the config produces them: a digest-pinned image is checked.
    Each setting concerned carries a comment pointing here.
    """
    reasons = [
        (
            "CKV_K8S_15",
            "imagePullPolicy IfNotPresent on purpose: a heavy image, a pod every 2 minutes, "
            "and a registry outage must not fail every run (README, Image tag)",
        ),
        (
            "CKV_K8S_11",
            "no CPU limit on purpose: a short job would only be throttled; the CPU request "
            "reserves what it needs and memory is limited",
        ),
        (
            "CKV_K8S_40",
            "runs as the image's own non-root user, uid 1000 (owner of its HOME and tools); "
            "runAsNonRoot, no privilege escalation and no capabilities hold",
        ),
    ]
    if "@sha256:" not in settings.image:
        reasons.append(
            (
                "CKV_K8S_43",
                "the image is the stack's `image` config value; pin a digest there to pass "
                "this check (README, Image tag, says what each choice costs)",
            )
        )
    if "@" not in settings.image and image_tag(settings.image) in ("", "latest"):
        reasons.append(
            (
                "CKV_K8S_14",
                "`latest` is the default `image` config value because registry retention "
                "pruned the pinned tag the original used (README, Image tag)",
            )
        )
    if settings.dolt_password_secret_name:
        reasons.append(
            (
                "CKV_K8S_35",
                "bd 1.0.2 reads the Dolt password only from the env var BEADS_DOLT_PASSWORD; "
                "it comes from the Secret by secretKeyRef, never as a literal",
            )
        )
    return {
        f"checkov.io/skip{number}": f"{check}={reason}"
        for number, (check, reason) in enumerate(reasons, start=1)
    }
