"""Render the Pulumi program or the component under Pulumi's own mocks and keep what it made."""

from __future__ import annotations

import runpy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi.runtime
from pulumi.runtime.settings import get_root_resource

from devtools.paths import ROOT

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

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None

    exports: dict[str, Any] = field(default_factory=dict)

    def stack_outputs(self) -> dict[str, Any]:
        return self.exports

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


def render(build: Callable[[], object], project: str = PROJECT) -> Recorder:
    """Run `build` as a Pulumi program under mocks; return every resource it registered."""
    recorder = Recorder()
    pulumi.runtime.set_mocks(
        recorder,
        project=project,
        stack="test",
        preview=False,
    )

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[None]:
        # The mocks keep one root stack per process: forget the previous render's exports.
        root = get_root_resource()
        if root is not None:
            root.outputs.clear()  # type: ignore[attr-defined]
        build()
        exported = root.outputs if root is not None else {}  # type: ignore[attr-defined]
        return pulumi.Output.from_input(exported).apply(recorder.exports.update)

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
