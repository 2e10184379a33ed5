"""Render the Pulumi program or the component under Pulumi's own mocks and keep what it made."""

from __future__ import annotations

import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "beads-autodispatch"


@dataclass
class Resource:
    type: str
    name: str
    inputs: dict[str, Any]


@dataclass
class Recorder(pulumi.runtime.Mocks):
    resources: list[Resource] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(Resource(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}

    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stack_outputs(self) -> dict[str, Any]:
        for urn, values in self.outputs.items():
            if "::pulumi:pulumi:Stack::" in urn:
                return values
        return {}

    def of_type(self, type_token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_token]

    def configmap(self, k8s_name: str) -> dict[str, Any]:
        for resource in self.of_type("kubernetes:core/v1:ConfigMap"):
            if resource.inputs["metadata"]["name"] == k8s_name:
                return resource.inputs
        raise KeyError(k8s_name)

    def cronjob(self, k8s_name: str) -> dict[str, Any]:
        for resource in self.of_type("kubernetes:batch/v1:CronJob"):
            if resource.inputs["metadata"]["name"] == k8s_name:
                return resource.inputs
        raise KeyError(k8s_name)


class _OutputRecordingMonitor(MockMonitor):  # type: ignore[misc]
    """The stock mock monitor drops registered outputs; exports are worth asserting on."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self._recorder = recorder

    def RegisterResourceOutputs(self, request: Any) -> Any:  # noqa: N802 (gRPC method name)
        values = json_format.MessageToDict(request.outputs)
        self._recorder.outputs[request.urn] = values
        return super().RegisterResourceOutputs(request)


def render(build: Callable[[], object]) -> Recorder:
    """Run `build` as a Pulumi program under mocks; return every resource it registered."""
    recorder = Recorder()
    pulumi.runtime.set_mocks(
        recorder,
        project=PROJECT,
        stack="test",
        preview=False,
        monitor=_OutputRecordingMonitor(recorder),
    )

    @pulumi.runtime.test  # type: ignore[misc]
    def program() -> None:
        build()

    program()
    return recorder


def render_program(config: dict[str, str] | None = None) -> Recorder:
    """The real __main__.py with the given stack config (keys without the project prefix)."""
    pulumi.runtime.set_all_config(
        {f"{PROJECT}:{key}": value for key, value in (config or {}).items()}
    )
    try:
        return render(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"))
    finally:
        pulumi.runtime.set_all_config({})
