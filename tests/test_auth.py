"""API keys (api/auth.py): the key file, its reload while a worker runs, `clipguard keys`.

Time is a fake clock handed to `ApiKeys.load`: the tests move it instead of sleeping.
"""

import hashlib
import json
import logging
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from aiohttp import web

from api import auth
from api.auth import KEYS, ApiKeys, add_key, create_key, list_keys, revoke_key
from api.views import install
from streams import cli
from streams.errors import ConfigError
from streams.settings import Settings
from tests.test_api import InMemoryService

KEY_SHAPE = re.compile(r"cg_([0-9a-f]{8})_([A-Za-z0-9_-]{32})")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds=1.0):
        self.now += seconds


@pytest.fixture
def path(tmp_path):
    return tmp_path / "conf" / "keys.json"


@pytest.fixture
def clock():
    return Clock()


def sha256(key):
    return hashlib.sha256(key.encode()).hexdigest()


def write_v1(path, entries):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"keys": entries}))
    path.chmod(0o600)


def edit(path, text):
    """A manual edit in place (not atomic), keeping the file's mode."""
    path.write_text(text)


# --- the file ---------------------------------------------------------------------------


def test_a_key_is_cg_id_secret_and_the_file_keeps_only_its_digest(path):
    key = add_key(path, "acme")
    match = KEY_SHAPE.fullmatch(key)
    assert match, key
    doc = json.loads(path.read_text())
    assert doc["version"] == 2
    [entry] = doc["keys"]
    assert set(entry) == {"id", "tenant", "sha256", "created_at"}
    assert entry["id"] == match[1] and entry["tenant"] == "acme"
    assert entry["sha256"] == sha256(key)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["created_at"])
    text = path.read_text()
    assert key not in text and match[2] not in text


def test_create_key_gives_key_and_id_and_keeps_earlier_keys(path):
    first = create_key(path, "acme")
    second = create_key(path, "globex")
    assert first.key.split("_")[1] == first.info.id and first.info.tenant == "acme"
    assert [k.id for k in list_keys(path)] == [first.info.id, second.info.id]
    keys = ApiKeys.load(path)
    assert keys.tenant_of(first.key) == "acme" and keys.tenant_of(second.key) == "globex"


def test_written_file_is_0600_even_under_a_permissive_umask_and_no_temp_file_stays(path):
    old = os.umask(0)
    try:
        for tenant in ("a", "b", "c"):
            add_key(path, tenant)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json"]


def test_a_write_replaces_the_file_it_does_not_rewrite_it_in_place(path):
    add_key(path, "acme")
    before = path.stat().st_ino
    add_key(path, "globex")
    assert path.stat().st_ino != before  # a new file renamed over the old one


def test_a_failed_write_leaves_the_old_file_whole_and_no_temp_file(path, monkeypatch):
    key = add_key(path, "acme")
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(auth.os, "fsync", broken_fsync)
    with pytest.raises(ConfigError, match="No space left"):
        add_key(path, "globex")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json"]
    assert ApiKeys.load(path).tenant_of(key) == "acme"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602, 0o666, 0o700])
def test_a_file_open_to_group_or_others_is_refused_with_the_fix(path, mode):
    add_key(path, "acme")
    path.chmod(mode)
    if mode & 0o077 == 0:  # 0700: owner only, accepted
        ApiKeys.load(path)
        return
    for attempt in (
        lambda: ApiKeys.load(path),
        lambda: add_key(path, "x"),
        lambda: list_keys(path),
    ):
        with pytest.raises(ConfigError) as refused:
            attempt()
        assert str(path) in str(refused.value)
        assert f"chmod 600 {path}" in str(refused.value)


def test_owner_read_only_is_accepted(path):
    key = add_key(path, "acme")
    path.chmod(0o400)
    assert ApiKeys.load(path).tenant_of(key) == "acme"


def test_a_symlinked_key_file_is_followed_and_stays_a_link(tmp_path):
    real = tmp_path / "secrets" / "keys.json"
    key = add_key(real, "acme")
    link = tmp_path / "keys.json"
    link.symlink_to(real)
    assert ApiKeys.load(link).tenant_of(key) == "acme"
    other = add_key(link, "globex")
    assert link.is_symlink()
    assert ApiKeys.load(real).tenant_of(other) == "globex"
    real.chmod(0o644)  # the target's mode is what counts
    with pytest.raises(ConfigError, match="chmod 600"):
        ApiKeys.load(link)


def test_a_missing_file_is_a_config_error_naming_the_command(path):
    with pytest.raises(ConfigError, match="clipguard keys add TENANT"):
        ApiKeys.load(path)


def test_concurrent_adds_lose_no_key(path):
    add_key(path, "seed")
    made = []

    def adder():
        for _ in range(5):
            made.append(add_key(path, "acme"))

    threads = [threading.Thread(target=adder) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = ApiKeys.load(path)
    assert len(keys) == 21
    assert all(keys.tenant_of(k) == "acme" for k in made)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"version": 3, "keys": []},
        {"version": True, "keys": []},
        {"version": "2", "keys": []},
        {"version": 2, "keys": {}},
        {"version": 2, "keys": [], "extra": 1},
        {"version": 2, "keys": [{"id": "0123abcd", "tenant": "acme", "sha256": "0" * 64}]},
        {
            "version": 2,
            "keys": [{"id": "XYZ", "tenant": "a", "sha256": "0" * 64, "created_at": None}],
        },
        {
            "version": 2,
            "keys": [{"id": "0123abcd", "tenant": "a", "sha256": "0" * 63, "created_at": None}],
        },
        {
            "version": 2,
            "keys": [{"id": "0123abcd", "tenant": "a", "sha256": "0" * 64, "created_at": "x"}],
        },
        {
            "version": 2,
            "keys": [{"id": "0123abcd", "tenant": "a b", "sha256": "0" * 64, "created_at": None}],
        },
        {
            "version": 2,
            "keys": [
                {"id": "0123abcd", "tenant": "a", "sha256": "0" * 64, "created_at": None},
                {"id": "0123abcd", "tenant": "b", "sha256": "1" * 64, "created_at": None},
            ],
        },
        {"keys": [{"key": "cg_x", "tenant": "a", "extra": 1}]},
        {"keys": [{"key": 5, "tenant": "a"}]},
        {"keys": [{"key": "cg_x", "tenant": "../etc"}]},
        {"keys": [{"key": "cg_x", "tenant": "a"}, {"key": "cg_x", "tenant": "b"}]},
    ],
)
def test_an_invalid_file_is_a_config_error_naming_it(path, doc):
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        ApiKeys.load(path)


def test_every_lookup_compares_against_every_entry(path, monkeypatch):
    keys = {t: add_key(path, t) for t in ("a", "b", "c", "d")}
    loaded = ApiKeys.load(path)
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda x, y: calls.append(1) or real(x, y))
    for presented in (keys["a"], keys["d"], "cg_00000000_" + "x" * 32):
        calls.clear()
        loaded.tenant_of(presented)
        assert len(calls) == 4  # no early exit on a match


# --- version 1 (plaintext) files of older installs -----------------------------------------


def test_a_version_1_file_is_still_read(path):
    write_v1(path, [{"key": "cg_oldkey123", "tenant": "acme"}])
    keys = ApiKeys.load(path)
    assert keys.tenant_of("cg_oldkey123") == "acme"
    assert keys.tenant_of("cg_oldkey12") is None
    [info] = list_keys(path)
    assert (
        info.tenant == "acme" and info.created_at is None and re.fullmatch("[0-9a-f]{8}", info.id)
    )


def test_add_migrates_a_version_1_file_to_digests(path):
    write_v1(path, [{"key": "cg_oldkey123", "tenant": "acme"}, {"key": "legacy-2", "tenant": "b"}])
    ids = [k.id for k in list_keys(path)]
    new = add_key(path, "globex")
    text = path.read_text()
    assert "cg_oldkey123" not in text and "legacy-2" not in text
    doc = json.loads(text)
    assert doc["version"] == 2
    assert [e["sha256"] for e in doc["keys"][:2]] == [sha256("cg_oldkey123"), sha256("legacy-2")]
    assert [k.id for k in list_keys(path)][:2] == ids  # the ids `keys list` showed still hold
    keys = ApiKeys.load(path)
    assert keys.tenant_of("cg_oldkey123") == "acme" and keys.tenant_of(new) == "globex"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_revoke_by_the_id_list_showed_on_a_version_1_file(path):
    write_v1(path, [{"key": "cg_oldkey123", "tenant": "acme"}, {"key": "cg_other", "tenant": "b"}])
    first = list_keys(path)[0]
    assert revoke_key(path, first.id) == first
    keys = ApiKeys.load(path)
    assert keys.tenant_of("cg_oldkey123") is None and keys.tenant_of("cg_other") == "b"
    assert "cg_other" not in path.read_text()


# --- reload while running -----------------------------------------------------------------


def test_a_key_added_while_running_is_accepted_within_a_second(path, clock):
    add_key(path, "acme")
    keys = ApiKeys.load(path, clock=clock)
    new = add_key(path, "globex")
    clock.advance(0.5)
    assert keys.tenant_of(new) is None  # the file is looked at once a second at most
    clock.advance(0.5)
    assert keys.tenant_of(new) == "globex"


def test_a_revoked_key_is_refused_within_a_second(path, clock):
    old = create_key(path, "acme")
    other = add_key(path, "globex")
    keys = ApiKeys.load(path, clock=clock)
    revoke_key(path, old.info.id)
    clock.advance()
    assert keys.tenant_of(old.key) is None and keys.tenant_of(other) == "globex"


def test_the_file_is_statted_at_most_once_a_second(path, clock, monkeypatch):
    key = add_key(path, "acme")
    keys = ApiKeys.load(path, clock=clock)
    stats = []
    real = auth.os.stat
    monkeypatch.setattr(auth.os, "stat", lambda p, *a, **k: stats.append(p) or real(p, *a, **k))
    for _ in range(100):
        keys.tenant_of(key)
    assert stats == []
    clock.advance()
    for _ in range(100):
        keys.tenant_of(key)
    assert len(stats) == 1


@pytest.mark.parametrize(
    "breakage",
    [
        "not json {",
        '{"version": 2, "keys": [{"id": "bad"}]}',
        "[" * 100_000 + "]" * 100_000,
        "\ufeff{}",
        "chmod",
        "delete",
        "",
    ],
    ids=["json", "entry", "nested", "bom", "chmod", "delete", "empty"],
)
def test_a_broken_change_keeps_the_old_keys_and_is_logged_once(path, clock, caplog, breakage):
    key = add_key(path, "acme")
    keys = ApiKeys.load(path, clock=clock)
    if breakage == "chmod":
        path.chmod(0o644)
    elif breakage == "delete":
        path.unlink()
    else:
        edit(path, breakage)
    with caplog.at_level(logging.ERROR, logger="api.auth"):
        for _ in range(3):
            clock.advance()
            assert keys.tenant_of(key) == "acme"
            assert keys.tenant_of("cg_00000000_" + "x" * 32) is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert str(path) in errors[0].getMessage()
    if breakage == "chmod":
        assert "chmod 600" in errors[0].getMessage()


def test_after_a_broken_change_the_next_good_one_is_used(path, clock):
    key = add_key(path, "acme")
    keys = ApiKeys.load(path, clock=clock)
    edit(path, "{ half an edit")
    clock.advance()
    assert keys.tenant_of(key) == "acme"
    path.unlink()
    new = add_key(path, "globex")
    clock.advance()
    assert keys.tenant_of(new) == "globex" and keys.tenant_of(key) is None


def test_a_chmod_back_to_0600_is_noticed(path, clock):
    key = add_key(path, "acme")
    keys = ApiKeys.load(path, clock=clock)
    text = json.loads(path.read_text())
    text["keys"] = []
    edit(path, json.dumps(text))
    path.chmod(0o644)
    clock.advance()
    assert keys.tenant_of(key) == "acme"  # the emptied file is refused: mode open to others
    path.chmod(0o600)  # only the mode changes (ctime), not the content
    clock.advance()
    assert keys.tenant_of(key) is None and len(keys) == 0


async def test_the_running_api_sees_added_and_revoked_keys_without_restart(
    aiohttp_client, tmp_path, clock
):
    settings = Settings(
        api_keys_file=tmp_path / "keys.json",
        upload_dir=tmp_path / "uploads",
        media_roots=(tmp_path / "media",),
    )
    first = create_key(settings.api_keys_file, "acme")
    app = web.Application()
    install(app, InMemoryService(settings), settings)
    app[KEYS] = ApiKeys.load(settings.api_keys_file, clock=clock)
    client = await aiohttp_client(app)
    url = f"/api/result/{'a' * 24}"

    async def status(key):
        return (await client.get(url, headers={"Authorization": f"Bearer {key}"})).status

    assert await status(first.key) == 404  # authenticated; no such result
    second = add_key(settings.api_keys_file, "globex")
    clock.advance()
    assert await status(second) == 404
    revoke_key(settings.api_keys_file, first.info.id)
    clock.advance()
    assert await status(first.key) == 401 and await status(second) == 404


# --- clipguard keys -----------------------------------------------------------------------


@pytest.fixture
def env_file(path, monkeypatch):
    monkeypatch.setenv("CLIPGUARD_API_KEYS_FILE", str(path))
    return path


def test_cli_add_prints_the_key_once_and_its_id(env_file, capsys):
    assert cli.main(["keys", "add", "acme"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    match = KEY_SHAPE.fullmatch(key)
    assert match, out
    assert match[1] in err and "acme" in err and key not in err
    assert ApiKeys.load(env_file).tenant_of(key) == "acme"


def test_cli_list_shows_id_tenant_and_time_never_a_secret_or_digest(env_file, capsys):
    keys = [add_key(env_file, "acme"), add_key(env_file, "globex")]
    assert cli.main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split("\t") == ["id", "tenant", "created_at"]
    assert [line.split("\t")[:2] for line in lines[1:]] == [
        [k.split("_")[1], t] for k, t in zip(keys, ("acme", "globex"), strict=True)
    ]
    for key in keys:
        assert key not in out and key.split("_", 2)[2] not in out and sha256(key) not in out


def test_cli_revoke_removes_the_key(env_file, capsys):
    gone = create_key(env_file, "acme")
    kept = add_key(env_file, "globex")
    assert cli.main(["keys", "revoke", gone.info.id]) == 0
    assert gone.info.id in capsys.readouterr().out
    keys = ApiKeys.load(env_file)
    assert keys.tenant_of(gone.key) is None and keys.tenant_of(kept) == "globex"


@pytest.mark.parametrize("key_id", ["0badc0de", "cg_0badc0de_secretsecret", "../x", ""])
def test_cli_revoke_of_an_unknown_id_is_exit_2_with_one_line(env_file, capsys, key_id):
    add_key(env_file, "acme")
    before = env_file.read_bytes()
    assert cli.main(["keys", "revoke", key_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipguard: error: ") and err.count("\n") == 1
    assert "secretsecret" not in err
    assert env_file.read_bytes() == before


def test_cli_on_a_missing_or_open_file_is_exit_2(env_file, capsys):
    assert cli.main(["keys", "list"]) == 2
    assert "clipguard keys add TENANT" in capsys.readouterr().err
    add_key(env_file, "acme")
    env_file.chmod(0o644)
    for argv in (["keys", "list"], ["keys", "add", "x"], ["keys", "revoke", "0badc0de"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"chmod 600 {env_file}" in err and err.count("\n") == 1


def test_cli_add_refuses_a_bad_tenant(env_file, capsys):
    assert cli.main(["keys", "add", "../etc"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert not env_file.exists()


def test_cli_migrate_rewrites_a_version_1_file(env_file, capsys):
    write_v1(env_file, [{"key": "cg_oldkey123", "tenant": "acme"}])
    assert cli.main(["keys", "migrate"]) == 0
    assert "cg_oldkey123" not in env_file.read_text()
    assert json.loads(env_file.read_text())["version"] == 2
    assert ApiKeys.load(env_file).tenant_of("cg_oldkey123") == "acme"
    assert cli.main(["keys", "migrate"]) == 0
    assert "already" in capsys.readouterr().out


def test_add_key_keeps_its_signature_for_existing_callers(tmp_path: Path):
    key = add_key(tmp_path / "new" / "keys.json", "acme")
    assert isinstance(key, str) and key.startswith("cg_")
