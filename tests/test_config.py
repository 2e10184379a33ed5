"""Every setting is declared once (a pydantic field); each other spelling must equal it.

Pulumi.yaml (the CLI reads it), the runtime ConfigMap (the pods read it) and the README's and
runbook's tables (people read them) are derived from the fields or checked here, in one place.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from components.config import CONFIG_KEYS, BeadsAutoDispatchArgs, ConfigKey, settings_from
from devtools.paths import ROOT
from jobs.settings import ConfigError, JobSettings, RuntimeSettings, env_name, load_settings


def _readme_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or value == "":
        return "(empty)"
    return f"`{value}`"


def config_table_rows() -> list[str]:
    return [
        f"| `{key.name}` | {key.type} | {_readme_default(key.default)} | {key.description} |"
        for key in CONFIG_KEYS
    ]


def env_table_rows() -> list[str]:
    rows = []
    for field, info in JobSettings.model_fields.items():
        meaning = (
            f"config key `{_key(field).name}`"
            if field in RuntimeSettings.model_fields
            else info.description
        )
        rows.append(f"| `{env_name(field)}` | {_readme_default(info.default)} | {meaning} |")
    return rows


def _key(field: str) -> ConfigKey:
    return next(key for key in CONFIG_KEYS if key.field == field)


def _table_after(heading: str, text: str) -> list[str]:
    section = text.split(heading, 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    block_end = section.find("\n\n", section.find("| `"))
    return [row for row in rows if section.find(row) < block_end]


def test_pulumi_yaml_declares_each_key_as_the_fields_do() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text(encoding="utf-8"))["config"]
    expected = {
        key.name: {"type": key.type, "default": key.default, "description": key.description}
        for key in CONFIG_KEYS
    }
    assert declared == expected


def test_readme_tables_are_the_fields() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    expected_config, expected_env = config_table_rows(), env_table_rows()
    assert _table_after("## Configuration", readme) == expected_config, "\n".join(expected_config)
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    assert _table_after("## The jobs' environment", runbook) == expected_env, "\n".join(
        expected_env
    )


def test_the_runtime_configmap_is_every_runtime_field_by_its_env_name() -> None:
    settings = settings_from({"maxDispatchAttempts": "5", "dispatcherEnabled": "false"})
    data = settings.as_env()
    assert list(data) == [env_name(field) for field in RuntimeSettings.model_fields]
    # What the pod reads back is what the stack said: one parser on both sides.
    back = load_settings(data)
    assert {f: getattr(back, f) for f in RuntimeSettings.model_fields} == {
        f: getattr(settings, f) for f in RuntimeSettings.model_fields
    }
    assert back.max_dispatch_attempts == 5
    assert back.dispatcher_enabled is False


@pytest.mark.parametrize(
    ("key", "value", "env"),
    [
        ("pollIntervalSeconds", "0", "POLL_INTERVAL_SECONDS"),
        ("httpTimeoutSeconds", "1.5", "HTTP_TIMEOUT_SECONDS"),
        ("reaperThresholdMinutes", "20000", "REAPER_THRESHOLD_MINUTES"),
        ("agentAssignee", "none", "AGENT_ASSIGNEE"),
        ("beadboardUrl", "ftp://x", "BEADBOARD_URL"),
        ("dispatcherEnabled", "maybe", "DISPATCHER_ENABLED"),
    ],
)
def test_deploy_time_and_run_time_refuse_the_same_value_with_the_same_reason(
    key: str, value: str, env: str
) -> None:
    with pytest.raises(ConfigError) as at_deploy:
        settings_from({key: value})
    with pytest.raises(ConfigError) as at_run:
        load_settings({env: value})
    assert str(at_deploy.value) == f"config key {key!r}: " + str(at_run.value).removeprefix(
        f"{env} "
    )


def test_each_key_is_one_name_across_the_boundary() -> None:
    for key in CONFIG_KEYS:
        assert re.fullmatch(r"[a-z][A-Za-z0-9]*", key.name)
        if key.env is not None:
            assert key.env == re.sub(r"(?<!^)(?=[A-Z])", "_", key.name).upper()
    assert "dispatcherEnabled" in {key.name for key in CONFIG_KEYS}


def test_every_argument_is_documented() -> None:
    for field, info in BeadsAutoDispatchArgs.model_fields.items():
        assert info.description and info.description.endswith("."), field


def test_the_kill_switch_says_it_pauses_both_jobs() -> None:
    assert "both" in _key("dispatcher_enabled").description
