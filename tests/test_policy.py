"""Per-tenant policy: thresholds, the risk mapping, and loud failures on a wrong file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.stages.policy import LABELS, Policy, load_policies


def scores(**values: float) -> dict[str, float]:
    return {label: values.get(label, 0.0) for label in LABELS}


def test_default_risk_mapping() -> None:
    policy = Policy()
    assert policy.risk(scores(person=0.9)) == "intrusion"
    assert policy.risk(scores(vehicule=0.6)) == "intrusion"
    assert policy.risk(scores(person=0.4)) == "danger"  # uncertain person
    assert policy.risk(scores(animal=0.8)) == "danger"
    assert policy.risk(scores(plant=1.0, wind=1.0, NOTHING=0.0)) == "safe"
    assert policy.risk(scores(person=0.2, NOTHING=0.9)) == "safe"


def test_labels_are_those_above_threshold_highest_first() -> None:
    policy = Policy()
    assert policy.labels(scores(person=0.7, intrusion=0.7, text=0.95, plant=0.2)) == [
        "text",
        "person",
        "intrusion",
    ]


def test_without_a_file_every_tenant_gets_the_default(tmp_path: Path) -> None:
    book = load_policies(None)
    assert book.for_tenant("anyone") == Policy()


def test_tenant_overrides_apply_on_top_of_the_file_default(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        json.dumps(
            {
                "default": {"thresholds": {"person": 0.6}},
                "tenants": {
                    "farm": {"danger_labels": [], "thresholds": {"animal": 0.9}},
                    "depot": {"uncertain": {"vehicule": 0.45}},
                },
            }
        )
    )
    book = load_policies(path)
    farm = book.for_tenant("farm")
    assert farm.risk(scores(animal=0.95)) == "safe"  # animals are no danger on a farm
    assert farm.risk(scores(person=0.55)) == "danger"  # the file's default still applies
    assert book.for_tenant("depot").risk(scores(vehicule=0.4)) == "safe"
    assert book.for_tenant("someone-else").risk(scores(person=0.55)) == "danger"
    assert Policy().risk(scores(person=0.55)) == "intrusion"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"tenants": {"acme": {"treshold": {}}}}, ["'acme'", "treshold"]),
        ({"tenants": {"acme": {"thresholds": {"vehicle": 0.5}}}}, ["'acme'", "vehicle"]),
        ({"tenants": {"acme": {"thresholds": {"person": 1.5}}}}, ["'acme'", "person"]),
        ({"tenants": {"acme": {"uncertain": {"person": 0.8}}}}, ["'acme'", "uncertain.person"]),
        ({"tenants": {"acme": {"danger_labels": ["cat"]}}}, ["'acme'", "cat"]),
        ({"tenant": {}}, ["tenant"]),
    ],
)
def test_wrong_policy_files_fail_naming_tenant_and_key(
    tmp_path: Path, content: dict[str, object], words: list[str]
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as info:
        load_policies(path)
    for word in words:
        assert word in str(info.value)


def test_unreadable_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_policies(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_policies(tmp_path / "bad.json")


def test_policy_cannot_be_changed_after_it_is_built() -> None:
    policy = Policy()
    with pytest.raises(TypeError):
        policy.thresholds["person"] = 0.1  # type: ignore[index]
