"""Render the Pulumi program or the component under Pulumi's own mocks and keep what it made.

Pulumi's mock monitor does not run `transforms` (the engine does, over a callback server the
mocks never start), so TransformingMonitor does the engine's part: a resource's own
transforms, then each ancestor's, see and may replace its inputs before the mocks get them.
"""

from __future__ import annotations

import runpy
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi.runtime
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.proto import callback_pb2
from pulumi.runtime.settings import SETTINGS, get_root_resource
from pulumi.runtime.sync_await import _sync_await

from devtools.paths import ROOT

PROJECT = "beads-autodispatch"
# What every committed stack file sets for the Kubernetes provider (the component refuses
# to run without it, see components/auto_dispatch.py).
STACK_PROVIDER_CONFIG: dict[str, str] = {"kubernetes:enableConfigMapMutable": "true"}


@dataclass
class Resource:
    type: str
    name: str
    inputs: dict[str, Any]
    provider: str = ""  # "<provider urn>::<id>", or "" for the default provider


@dataclass
class Recorder(pulumi.runtime.Mocks):
    resources: list[Resource] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(Resource(args.typ, args.name, dict(args.inputs), args.provider or ""))
        return f"{args.name}-id", dict(args.inputs)

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None

    exports: dict[str, Any] = field(default_factory=dict)
    # What each component passed to register_outputs, by the component's name.
    registered_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

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


class _TransformCallbacks:
    """Stands in for the SDK's callback server: keeps each transform under a token."""

    def __init__(self) -> None:
        self.transforms: dict[str, pulumi.ResourceTransform] = {}

    def register_transform(self, transform: pulumi.ResourceTransform) -> callback_pb2.Callback:
        token = str(uuid.uuid4())
        self.transforms[token] = transform
        return callback_pb2.Callback(token=token, target="mocks")


class TransformingMonitor(MockMonitor):
    """The mock monitor plus the engine's transforms (own first, then each parent's), keeping
    what each component registers as its outputs."""

    def __init__(self, recorder: Recorder, callbacks: _TransformCallbacks) -> None:
        super().__init__(recorder)
        self.recorder = recorder
        self.callbacks = callbacks
        self.own_transforms: dict[str, list[str]] = {}
        self.parent_of: dict[str, str] = {}

    def RegisterResource(self, request: Any) -> Any:
        urn = self.make_urn(request.parent, request.type, request.name)
        self.own_transforms[urn] = [callback.token for callback in request.transforms]
        self.parent_of[urn] = request.parent
        props = rpc.deserialize_properties(request.object)
        changed = False
        for token in self._chain(urn):
            result = self.callbacks.transforms[token](
                pulumi.ResourceTransformArgs(
                    custom=request.custom,
                    type_=request.type,
                    name=request.name,
                    props=props,
                    opts=pulumi.ResourceOptions(),
                )
            )
            if isinstance(result, pulumi.ResourceTransformResult):
                props, changed = dict(result.props), True
        if changed:
            request.object.CopyFrom(_sync_await(rpc.serialize_properties(props, {})))
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]

    def RegisterResourceOutputs(self, request: Any) -> Any:
        name = request.urn.rsplit("::", 1)[-1]
        self.recorder.registered_outputs[name] = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)  # type: ignore[no-untyped-call]

    def _chain(self, urn: str) -> list[str]:
        tokens: list[str] = []
        while urn:
            tokens.extend(self.own_transforms.get(urn, []))
            urn = self.parent_of.get(urn, "")
        return tokens


def render(build: Callable[[], object], project: str = PROJECT) -> Recorder:
    """Run `build` as a Pulumi program under mocks; return every resource it registered."""
    recorder = Recorder()
    callbacks = _TransformCallbacks()
    pulumi.runtime.set_mocks(
        recorder,
        project=project,
        stack="test",
        preview=False,
        monitor=TransformingMonitor(recorder, callbacks),
    )
    SETTINGS.callbacks = callbacks

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


def render_program(
    config: dict[str, str] | None = None,
    provider_config: Mapping[str, str] = STACK_PROVIDER_CONFIG,
) -> Recorder:
    """The real __main__.py with the given stack config (keys without the project prefix)
    and the Kubernetes provider's config (full keys, as a stack file has them)."""
    return render_with_config(
        lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"),
        {**provider_config, **{f"{PROJECT}:{key}": value for key, value in (config or {}).items()}},
    )


def render_with_config(
    build: Callable[[], object], config: Mapping[str, str], project: str = PROJECT
) -> Recorder:
    """`render` with the given stack config (full keys) set while `build` runs."""
    pulumi.runtime.set_all_config(dict(config))
    try:
        return render(build, project)
    finally:
        pulumi.runtime.set_all_config({})
