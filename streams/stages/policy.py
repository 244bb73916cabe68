"""Per-tenant classification policy: label thresholds and the mapping from scores to risk.

A `Policy` decides which of the 13 scores become `labels` (score >= threshold) and which
`risk` a clip gets. The built-in default (docs/classify.md, "Policy"):

- `intrusion` when a label of `intrusion_labels` (person, vehicule) reaches its threshold;
- `danger` when one of them only reaches its lower `uncertain` threshold, or when a label of
  `danger_labels` (animal) reaches its threshold;
- `safe` otherwise.

`load_policies(path)` reads per-tenant overrides from a JSON file::

    {
      "default": {"thresholds": {"person": 0.6}},
      "tenants": {
        "farm-17": {"danger_labels": [], "thresholds": {"animal": 0.8}},
        "depot-3": {"uncertain": {"vehicule": 0.45}}
      }
    }

"default" changes the built-in policy for every tenant; a tenant's entry changes the result
of that. Unknown keys, labels and out-of-range values fail loudly with a `ConfigError` that
names the tenant and the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from streams.errors import ConfigError

# The published result scores exactly these, in this order ("vehicule" is the API's spelling).
LABELS: tuple[str, ...] = (
    "person", "vehicule", "animal", "intrusion", "spider", "web", "plant", "flag", "rain",
    "wind", "text", "other", "NOTHING",
)  # fmt: skip
RISKS: tuple[str, ...] = ("safe", "danger", "intrusion")

# Chosen from the evaluation set (docs/classify.md, "Evaluation"): object scores are the
# detector's own confidences held over two frames, so 0.5 keeps the detector's usual operating
# point; the heuristic labels are 0..1 rescalings of motion statistics, 0.5 is their midpoint.
DEFAULT_THRESHOLDS: Mapping[str, float] = MappingProxyType(
    {
        "person": 0.5, "vehicule": 0.5, "animal": 0.5, "intrusion": 0.5, "spider": 0.5,
        "web": 0.5, "plant": 0.5, "flag": 0.5, "rain": 0.5, "wind": 0.5, "text": 0.5,
        "other": 0.5, "NOTHING": 0.5,
    }
)  # fmt: skip
# The detector never reports a score under 0.30, so "uncertain" starts just above that floor.
DEFAULT_UNCERTAIN: Mapping[str, float] = MappingProxyType({"person": 0.35, "vehicule": 0.35})

_POLICY_KEYS = frozenset({"thresholds", "uncertain", "intrusion_labels", "danger_labels"})
_FILE_KEYS = frozenset({"default", "tenants"})


@dataclass(frozen=True)
class Policy:
    # default_factory: before 3.12 a MappingProxyType is unhashable, so dataclasses would refuse
    # it as a "mutable default".
    thresholds: Mapping[str, float] = field(default_factory=lambda: DEFAULT_THRESHOLDS)
    uncertain: Mapping[str, float] = field(default_factory=lambda: DEFAULT_UNCERTAIN)
    intrusion_labels: frozenset[str] = frozenset({"person", "vehicule"})
    danger_labels: frozenset[str] = frozenset({"animal"})

    def __post_init__(self) -> None:
        # Freeze the mappings so a Policy shared between clips can never drift.
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))
        object.__setattr__(self, "uncertain", MappingProxyType(dict(self.uncertain)))
        object.__setattr__(self, "intrusion_labels", frozenset(self.intrusion_labels))
        object.__setattr__(self, "danger_labels", frozenset(self.danger_labels))
        _validate(self, "policy")

    def labels(self, scores: Mapping[str, float]) -> list[str]:
        """Labels whose score reaches its threshold, highest score first (ties: API order)."""
        above = [label for label in LABELS if scores.get(label, 0.0) >= self.thresholds[label]]
        return sorted(above, key=lambda label: -scores[label])

    def risk(self, scores: Mapping[str, float]) -> str:
        if any(scores.get(lb, 0.0) >= self.thresholds[lb] for lb in self.intrusion_labels):
            return "intrusion"
        uncertain = any(
            scores.get(lb, 0.0) >= self.uncertain.get(lb, self.thresholds[lb])
            for lb in self.intrusion_labels
        )
        if uncertain or any(
            scores.get(lb, 0.0) >= self.thresholds[lb] for lb in self.danger_labels
        ):
            return "danger"
        return "safe"


@dataclass(frozen=True)
class PolicyBook:
    default: Policy = field(default_factory=Policy)
    tenants: Mapping[str, Policy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))

    def for_tenant(self, tenant: str | None) -> Policy:
        """The tenant's policy; a tenant without an entry gets the default."""
        if tenant is None:
            return self.default
        return self.tenants.get(tenant, self.default)


def load_policies(path: Path | None) -> PolicyBook:
    """Read the policy file (`Settings.policy_file`); None gives the built-in defaults."""
    if path is None:
        return PolicyBook()
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"policy file {path}: cannot read it ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"policy file {path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"policy file {path}: expected a JSON object at the top level")
    _unknown(raw, _FILE_KEYS, f"policy file {path}")
    default = _override(Policy(), raw.get("default", {}), f"policy file {path}, default")
    tenants_raw = raw.get("tenants", {})
    if not isinstance(tenants_raw, dict):
        raise ConfigError(f"policy file {path}: 'tenants' must be an object of tenant -> policy")
    tenants = {
        str(tenant): _override(default, entry, f"policy file {path}, tenant {tenant!r}")
        for tenant, entry in tenants_raw.items()
    }
    return PolicyBook(default=default, tenants=tenants)


def _override(base: Policy, entry: Any, where: str) -> Policy:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object with keys {sorted(_POLICY_KEYS)}")
    _unknown(entry, _POLICY_KEYS, where)
    changes: dict[str, Any] = {}
    for key in ("thresholds", "uncertain"):
        if key in entry:
            values = entry[key]
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: '{key}' must be an object of label -> number")
            for label, value in values.items():
                _check_label(label, f"{where}: '{key}'")
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{where}: '{key}.{label}' must be a number, got {value!r}")
            changes[key] = {**getattr(base, key), **{k: float(v) for k, v in values.items()}}
    for key in ("intrusion_labels", "danger_labels"):
        if key in entry:
            values = entry[key]
            if not isinstance(values, list):
                raise ConfigError(f"{where}: '{key}' must be a list of labels")
            for label in values:
                _check_label(label, f"{where}: '{key}'")
            changes[key] = frozenset(values)
    try:
        return replace(base, **changes)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _validate(policy: Policy, where: str) -> None:
    missing = [label for label in LABELS if label not in policy.thresholds]
    if missing:
        raise ConfigError(f"{where}: no threshold for {missing}")
    for key in ("thresholds", "uncertain"):
        for label, value in getattr(policy, key).items():
            _check_label(label, f"{where}: '{key}'")
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"'{key}.{label}' must be within 0..1, got {value}")
    for label, value in policy.uncertain.items():
        if value > policy.thresholds[label]:
            raise ConfigError(
                f"'uncertain.{label}' ({value}) is above 'thresholds.{label}' "
                f"({policy.thresholds[label]}): an uncertain hit must score lower than a sure one"
            )
    for label in policy.intrusion_labels | policy.danger_labels:
        _check_label(label, f"{where}: risk labels")


def _check_label(label: Any, where: str) -> None:
    if label not in LABELS:
        raise ConfigError(f"{where}: unknown label {label!r}; labels are {', '.join(LABELS)}")


def _unknown(entry: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(entry) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")
