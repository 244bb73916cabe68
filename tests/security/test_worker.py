"""A real `clipguard worker` on the real broker, attacked from outside (HTTP and Kafka).

The worker (tests/security/conftest.py) has its decoded topic created beforehand with a small
`max.message.bytes`, so every decoded clip is refused by Kafka for good: the tester's "wide
clip" case, where the clip got no answer at all.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from typing import ClassVar

import pytest

from streams.codec import DEAD_LETTER, RESULT, default_codec
from streams.errors import ErrorCode
from tests.kafka_io import clip_request, collect, produce_requests
from tests.test_e2e import CLIPS, call, multipart

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
codec = default_codec()


FAUST_VIEWS = [
    "/",
    "/table/",
    "/table/results/",
    "/table/results/{id}/",
    "/router/",
    "/router/results/{id}/",
    "/graph/",
    "/stats/",
    "/performance/",
    "/metrics",
    "/health/../table/results/{id}/",
]


def test_faust_views_and_any_unlisted_path_are_404_with_or_without_a_key(worker):
    key = worker["keys"]["acme"]
    status, result = call(
        f"{worker['url']}/api/classify?sync=true", key, *multipart(CLIPS / "people_h264.mp4")
    )
    assert status == 200, result
    for path in FAUST_VIEWS:
        url = worker["url"] + path.format(id=result["id"])
        for with_key in (None, key, worker["keys"]["globex"]):
            got_status, body = call(url, with_key)
            assert got_status == 404 and body["error"] == "not_found", (path, got_status, body)


def test_a_clip_whose_output_kafka_refuses_still_gets_an_answer_and_the_worker_lives(worker):
    key = worker["keys"]["acme"]
    status, result = call(
        f"{worker['url']}/api/classify?sync=true", key, *multipart(CLIPS / "people_h264.mp4")
    )
    assert status == 200, result
    assert result["status"]["classify"] == "error"
    assert result["error_code"] == ErrorCode.UNDELIVERABLE
    letters = asyncio.run(
        collect(worker["bootstrap"], f"{worker['prefix']}.deadletter", {result["id"].encode()})
    )
    letter = codec.parse(letters[result["id"].encode()][0], expect=DEAD_LETTER)
    assert letter["stage"] == "deliver" and letter["error_code"] == ErrorCode.UNDELIVERABLE
    assert call(f"{worker['url']}/health")[0] == 200


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self):
        _Recorder.seen.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"not a video")

    def log_message(self, *args):
        pass


def test_loopback_in_any_spelling_is_never_fetched_and_never_described(worker):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    key = worker["keys"]["acme"]
    try:
        for url in (
            f"http://１２７.０.０.１:{port}/a.mp4",
            f"http://2130706433:{port}/a.mp4",
            f"http://0x7f.0.0.1:{port}/a.mp4",
            f"http://127.1:{port}/a.mp4",
            f"http://[::ffff:127.0.0.1]:{port}/a.mp4",
            f"http://localhost:{port}/a.mp4",
        ):
            body = json.dumps({"video_url": url}).encode()
            status, answer = call(
                f"{worker['url']}/api/classify?sync=true", key, body,
                {"Content-Type": "application/json"},
            )  # fmt: skip
            if status == 400:  # refused at intake
                assert answer["field"] == "video_url", answer
                continue
            assert status == 200, answer
            assert answer["error_code"] == ErrorCode.SOURCE_FORBIDDEN, (url, answer)
            message = answer["error_msg"]
            assert "127.0.0.1" in url or "127.0.0.1" not in message  # no resolved address
            assert "refused" not in message and "Connect" not in message
    finally:
        server.shutdown()
    assert _Recorder.seen == []


def test_a_producer_claiming_an_existing_id_for_another_tenant_changes_nothing(worker, tmp_path):
    key = worker["keys"]["acme"]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    status, mine = call(f"{worker['url']}/api/classify?sync=true", key, *multipart(junk))
    assert status == 200 and mine["error_code"] == ErrorCode.INVALID_VIDEO
    impostor = clip_request("https://cams.example.com/x.mp4", tenant="globex", id=mine["id"])
    asyncio.run(produce_requests(worker["bootstrap"], f"{worker['prefix']}.requests", [impostor]))
    letters = asyncio.run(
        collect(worker["bootstrap"], f"{worker['prefix']}.deadletter", {mine["id"].encode()})
    )
    codes = set()
    deadline_letters = letters[mine["id"].encode()]
    for value in deadline_letters:
        codes.add(codec.parse(value, expect=DEAD_LETTER)["error_code"])
    # Wait until the impostor's result went through the results agent (its dead letter).
    for _ in range(60):
        if ErrorCode.ID_CONFLICT in codes:
            break
        more = asyncio.run(
            collect(worker["bootstrap"], f"{worker['prefix']}.deadletter", {mine["id"].encode()}, 5)
        )
        codes = {
            codec.parse(v, expect=DEAD_LETTER)["error_code"] for v in more[mine["id"].encode()]
        }
    assert ErrorCode.ID_CONFLICT in codes
    status, again = call(f"{worker['url']}/api/result/{mine['id']}", key)
    assert status == 200 and again == mine
    assert call(f"{worker['url']}/api/result/{mine['id']}", worker["keys"]["globex"])[0] == 404


def test_a_request_with_an_id_we_would_never_make_is_only_a_dead_letter(worker):
    bad = clip_request("https://cams.example.com/x.mp4", id="../../etc/passwd")
    asyncio.run(produce_requests(worker["bootstrap"], f"{worker['prefix']}.requests", [bad]))
    letters = asyncio.run(
        collect(worker["bootstrap"], f"{worker['prefix']}.deadletter", {bad["id"].encode()})
    )
    letter = codec.parse(letters[bad["id"].encode()][0], expect=DEAD_LETTER)
    assert letter["stage"] == "intake" and "24 lowercase hex" in letter["error_msg"]
    results = asyncio.run(
        collect(worker["bootstrap"], f"{worker['prefix']}.results", {bad["id"].encode()}, 5)
    )
    assert results == {}
    assert codec.parse  # the worker is still serving:
    assert call(f"{worker['url']}/health")[0] == 200


_ = RESULT
