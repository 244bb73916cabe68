"""The one settings object: environment in, typed values out, mistakes named."""

from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import Settings


def test_environment_is_read_and_typed():
    settings = Settings.from_env(
        {
            "CLIPGUARD_PARTITIONS": "8",
            "CLIPGUARD_SAMPLE_FPS": "2.5",
            "CLIPGUARD_MEDIA_ROOTS": "/srv/a, /srv/b",
            "CLIPGUARD_POLICY_FILE": "/etc/clipguard/policy.json",
            "PATH": "/usr/bin",  # not ours: ignored
        }
    )
    assert settings.partitions == 8
    assert settings.sample_fps == 2.5
    assert settings.media_roots == (Path("/srv/a"), Path("/srv/b"))
    assert settings.policy_file == Path("/etc/clipguard/policy.json")
    assert settings.topic("results") == "clipguard.results"


def test_explicit_arguments_win_over_the_environment():
    settings = Settings.from_env({"CLIPGUARD_WEB_PORT": "7000"}, web_port=7001)
    assert settings.web_port == 7001


def test_an_unknown_variable_is_refused_with_the_known_ones_listed():
    with pytest.raises(
        ConfigError, match=r"unknown setting CLIPGUARD_PARTITION;.*CLIPGUARD_PARTITIONS"
    ):
        Settings.from_env({"CLIPGUARD_PARTITION": "8"})


def test_a_bad_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"CLIPGUARD_WEB_PORT='http' is not a valid int"):
        Settings.from_env({"CLIPGUARD_WEB_PORT": "http"})


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().partitions = 3  # type: ignore[misc]


def test_every_setting_is_documented():
    import dataclasses

    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = [
        f"CLIPGUARD_{f.name.upper()}"
        for f in dataclasses.fields(Settings)
        if f"`CLIPGUARD_{f.name.upper()}`" not in page
    ]
    assert missing == []
