"""`clipguard status` against the suite's real broker and one real worker."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from api.auth import add_key
from devtools.cluster import free_ports
from streams.cli import main
from streams.settings import PROJECT_ROOT, Settings
from streams.status import Status, assigned_partitions, format_status, ranges, status
from tests.workers import Worker, running, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CLIPS = Path(__file__).parent / "fixtures" / "clips"
MANIFEST = json.loads((PROJECT_ROOT / "models" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("status")
    key = add_key(workdir / "keys.json", "acme")
    prefix = f"status-{uuid.uuid4().hex[:10]}"
    env = worker_env(kafka_bootstrap, prefix, workdir, "w1", log_format="json")
    worker = Worker(env, workdir / "w1.log")
    with running(worker):
        yield worker, key


def post_clip(worker: Worker, key: str, path: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="camera_id"\r\n\r\ncam-7\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="video"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{worker.url}/api/classify?sync=true",
        data=body,
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    with urllib.request.urlopen(request, timeout=180) as response:
        assert response.status == 200
        return dict(json.loads(response.read()))


async def settled(settings: Settings, tries: int = 20) -> Status:
    """The status once the worker has committed what it consumed (Faust commits every ~3 s)."""
    report = await status(settings)
    for _ in range(tries):
        if all(lag.lag == 0 for lag in report.lags) and report.results_last_minute >= 2:
            break
        await asyncio.sleep(1.5)
        report = await status(settings)
    return report


async def test_the_status_shows_the_worker_its_partitions_lag_results_and_model(
    deployment, monkeypatch, capsys
):
    worker, key = deployment
    results = [
        await asyncio.to_thread(post_clip, worker, key, CLIPS / "people_h264.mp4") for _ in range(2)
    ]
    assert all(r["status"]["classify"] == "done" for r in results)
    settings = Settings.from_env(environ=worker.env)

    report = await settled(settings)
    (member,) = report.members
    assert member.owns(settings.topic("requests")) == [0, 1, 2, 3]
    assert member.owns(settings.topic("results")) == [0, 1, 2, 3]
    assert report.state == "Stable"
    assert report.results_last_minute >= 2 and report.results_last_hour >= 2
    requests = report.lag_of("requests")
    assert requests is not None and requests.lag == 0 and requests.end >= 2
    assert (report.model, report.version) == (MANIFEST["name"], MANIFEST["version"])
    assert report.dead_letters_last_hour == 0
    screen = format_status(report)
    with capsys.disabled():  # docs/operations.md shows one (pytest -s)
        print(f"\n{screen}")
    assert f"group {settings.app_id} (Stable)" in screen
    assert "workers: 1" in screen and re.search(
        r"\n +faust-\S+ +127\.0\.0\.1 +requests +0-3\n", screen
    )
    assert f"{MANIFEST['name']} {MANIFEST['version']}" in screen

    # The command: the same screen, with the worker's environment, and as JSON.
    for name, value in worker.env.items():
        if name.startswith("CLIPGUARD_"):
            monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["status"]) == 0
    out = capsys.readouterr().out
    assert "workers: 1" in out and f"{MANIFEST['name']} {MANIFEST['version']}" in out
    assert await asyncio.to_thread(main, ["status", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["group"] == settings.app_id and len(document["members"]) == 1
    assert document["model"] == MANIFEST["name"]

    # One JSON clip_outcome line per result, in the worker's log.
    outcomes = {}
    for line in worker.log_path.read_text().splitlines():
        if line.startswith("{") and '"clip_outcome"' in line:
            record = json.loads(line)
            outcomes[record["clip_id"]] = record
    for result in results:
        line = outcomes[result["id"]]
        assert (line["tenant"], line["camera"], line["status"]) == ("acme", "cam-7", "done")
        assert line["risk"] == result["risk"] and line["labels"] == result["labels"]
        assert set(line["stage_ms"]) >= {"decode", "classify"} and line["error_code"] == 0
    assert key not in worker.log_path.read_text()


async def test_a_group_without_workers_says_so(deployment):
    worker, _ = deployment
    settings = Settings.from_env(environ={**worker.env, "CLIPGUARD_APP_ID": "no-such-group"})
    report = await status(settings)
    assert report.members == [] and report.state in ("Dead", "Empty")
    requests = report.lag_of("requests")
    assert requests is not None and requests.uncommitted >= 1  # the clips' partitions
    assert requests.lag == requests.end >= 2  # nothing committed: all of it is behind
    assert "no worker in group no-such-group" in format_status(report)


def test_an_unreachable_broker_is_one_line_and_exit_2(monkeypatch, capsys):
    (port,) = free_ports(1)
    monkeypatch.setenv("CLIPGUARD_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    monkeypatch.setenv("CLIPGUARD_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    started = time.monotonic()
    assert main(["status"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"clipguard: error: cannot reach Kafka at 127.0.0.1:{port}")
    assert time.monotonic() - started < 30


def test_assignments_and_ranges_parse():
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    raw = ConsumerProtocolMemberAssignment(
        0, [("p.requests", [3, 0, 1, 2]), ("p.results", [5, 1])], b'{"actives": {}}'
    ).encode()
    assert assigned_partitions(raw) == {"p.requests": [0, 1, 2, 3], "p.results": [1, 5]}
    assert assigned_partitions(b"") == {} and assigned_partitions(b"\x00") == {}
    assert ranges([0, 1, 2, 3, 5, 7, 8]) == "0-3,5,7-8"
