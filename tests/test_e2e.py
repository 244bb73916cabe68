"""The whole pipeline on the real Kafka broker, through a real `clipguard worker` process.

One worker serves this module (starting one costs a rebalance and a model load); each test
uses its own clip ids, and the module its own topic prefix and consumer group.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from api.auth import add_key
from streams.codec import DEAD_LETTER, DECODED, RESULT, default_codec
from streams.errors import ErrorCode
from tests.kafka_io import clip_request, collect, produce, produce_requests
from tests.workers import Worker, running, worker_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CLIPS = Path(__file__).parent / "fixtures" / "clips"
LABELS = {
    "person",
    "vehicule",
    "animal",
    "intrusion",
    "spider",
    "web",
    "plant",
    "flag",
    "rain",
    "wind",
    "text",
    "other",
    "NOTHING",
}
codec = default_codec()
EXAMPLE_KEYS = json.loads((Path(__file__).parent / "fixtures" / "result-example.json").read_text())


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    media = workdir / "media"
    media.mkdir()
    for name in ("people_h264.mp4", "tree_h264.mp4", "people_mjpeg.avi"):
        shutil.copy(CLIPS / name, media / name)
    (media / "junk.mp4").write_bytes(b"\x00junk" * 1000)
    data = (CLIPS / "people_h264.mp4").read_bytes()
    (media / "truncated.mp4").write_bytes(data[: len(data) // 50])
    keys = {t: add_key(workdir / "keys.json", t) for t in ("acme", "globex")}
    prefix = f"e2e-{uuid.uuid4().hex[:10]}"
    env = worker_env(
        kafka_bootstrap,
        prefix,
        workdir,
        "w1",
        max_upload_bytes="300000",
        http_allow_hosts="127.0.0.1",  # the test's own clip server (tests below)
    )
    worker = Worker(env, workdir / "w1.log")
    with running(worker):
        yield {
            "bootstrap": kafka_bootstrap,
            "prefix": prefix,
            "media": media,
            "keys": keys,
            "worker": worker,
        }


def topic(deployment, name):
    return f"{deployment['prefix']}.{name}"


def call(url, key=None, data=None, headers=None):
    request = urllib.request.Request(url, data=data, headers={**(headers or {})})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=180) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def multipart(path: Path, **fields: str) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="{path.name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def test_a_burst_of_good_and_bad_clips_all_come_out(deployment):
    media = deployment["media"]
    good = {
        name: clip_request((media / name).as_uri())
        for name in ("people_h264.mp4", "tree_h264.mp4", "people_mjpeg.avi")
    }
    bad = {
        ErrorCode.INVALID_VIDEO: clip_request((media / "junk.mp4").as_uri()),
        ErrorCode.SOURCE_NOT_FOUND: clip_request((media / "missing.mp4").as_uri()),
        ErrorCode.SOURCE_FORBIDDEN: clip_request("file:///etc/passwd"),
    }
    truncated = clip_request((media / "truncated.mp4").as_uri())
    requests = [*good.values(), *bad.values(), truncated]
    await produce_requests(deployment["bootstrap"], topic(deployment, "requests"), requests)
    await produce(
        deployment["bootstrap"],
        topic(deployment, "requests"),
        [(b"not-a-clip", b"this is not an Avro message")],
    )

    ids = {r["id"].encode() for r in requests}
    results = await collect(deployment["bootstrap"], topic(deployment, "results"), ids)
    assert set(results) == ids, "every clip, good or bad, has a result"
    final = {key: codec.parse(values[-1], expect=RESULT) for key, values in results.items()}

    for name, request in good.items():
        result = final[request["id"].encode()]
        assert result["error_code"] == 0, (name, result["error_msg"])
        assert result["status"] == {"classify": "done", "video": "done"}
        assert set(result["scores"]) == LABELS
        assert result["model"] and result["version"]
        assert result["metadata"] == {"site": "north"}
        specs = result["video"]["specs"]
        assert specs["height"] == min(320, specs["original_height"])  # never upscaled
    people = final[good["people_h264.mp4"]["id"].encode()]
    assert "person" in people["labels"] and people["risk"] == "intrusion"
    assert "person" not in final[good["tree_h264.mp4"]["id"].encode()]["labels"]

    for code, request in bad.items():
        result = final[request["id"].encode()]
        assert result["error_code"] == code, result["error_msg"]
        assert request["id"] in result["error_msg"]
        assert result["status"]["classify"] == "error"
    assert final[truncated["id"].encode()]["error_code"] in (0, ErrorCode.INVALID_VIDEO)

    bad_ids = {r["id"].encode() for r in bad.values()}
    letters = await collect(
        deployment["bootstrap"], topic(deployment, "deadletter"), bad_ids | {b"not-a-clip"}
    )
    assert set(letters) == bad_ids | {b"not-a-clip"}
    malformed = codec.parse(letters[b"not-a-clip"][0], expect=DEAD_LETTER)
    assert malformed["value"] == b"this is not an Avro message"
    assert malformed["error_code"] == ErrorCode.MALFORMED_MESSAGE
    decoded = await collect(
        deployment["bootstrap"],
        topic(deployment, "decoded"),
        {r["id"].encode() for r in good.values()},
    )
    assert (
        len(
            codec.parse(decoded[good["people_h264.mp4"]["id"].encode()][0], expect=DECODED)[
                "frames"
            ]
        )
        > 3
    )


def test_sync_post_then_get_returns_the_same_published_json(deployment):
    worker, keys = deployment["worker"], deployment["keys"]
    body, headers = multipart(
        CLIPS / "people_h264.mp4", camera_id="134188-VI08", metadata='{"no_trans": "20818"}'
    )
    status, result = call(f"{worker.url}/api/classify?sync=true", keys["acme"], body, headers)
    assert status == 200, result
    assert list(result) == list(EXAMPLE_KEYS)
    assert result["cameraId"] == "134188-VI08" and result["tenant"] == "acme"
    assert result["metadata"] == {"no_trans": "20818"}
    assert "person" in result["labels"]
    assert result["video"]["videoname"] == "people_h264.mp4"
    assert result["video"]["specs"]["original.width"] == 640
    assert result["video"]["specs"]["width"] == 568

    status, again = call(f"{worker.url}/api/result/{result['id']}", keys["acme"])
    assert status == 200 and again == result
    status, other = call(f"{worker.url}/api/result/{result['id']}", keys["globex"])
    assert status == 404 and other["error"] == "not_found"
    status, _ = call(f"{worker.url}/api/result/{result['id']}")
    assert status == 401


def test_async_post_is_pollable_and_a_corrupt_upload_gives_an_error_result(deployment, tmp_path):
    worker, key = deployment["worker"], deployment["keys"]["acme"]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 5000)
    body, headers = multipart(corrupt)
    status, accepted = call(f"{worker.url}/api/classify", key, body, headers)
    assert status == 202
    status, result = call(f"{worker.url}/api/classify?sync=true", key, *multipart(corrupt))
    assert status == 200
    assert result["error_code"] == ErrorCode.INVALID_VIDEO and result["error_msg"]
    status, polled = call(f"{worker.url}{accepted['poll']}", key)
    assert status == 200 and polled["id"] == accepted["id"]
    # The worker keeps serving after bad input.
    status, ok = call(
        f"{worker.url}/api/classify?sync=true", key, *multipart(CLIPS / "tree_h264.mp4")
    )
    assert status == 200 and ok["error_code"] == 0


def test_oversize_and_malformed_uploads_are_refused_and_the_worker_keeps_serving(
    deployment, tmp_path
):
    worker, key = deployment["worker"], deployment["keys"]["acme"]
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 400_000)
    status, body = call(f"{worker.url}/api/classify", key, *multipart(big))
    assert status == 413 and body["error"] == "too_large"
    status, body = call(
        f"{worker.url}/api/classify", key, b"--x\r\n", {"Content-Type": "multipart/form-data"}
    )
    assert status == 400
    status, body = call(
        f"{worker.url}/api/classify", key, b"{", {"Content-Type": "application/json"}
    )
    assert status == 400 and body["field"] == "body"
    status, result = call(
        f"{worker.url}/api/classify?sync=true", key, *multipart(CLIPS / "people_mjpeg.avi")
    )
    assert status == 200 and result["error_code"] == 0


class HeldClipServer:
    """Serves one clip over HTTP on 127.0.0.1, holding every answer until `release()`."""

    def __init__(self, path: Path) -> None:
        held = self.held = threading.Event()
        body = path.read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                held.wait(120)
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/{path.name}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.held.set()

    def close(self) -> None:
        self.held.set()
        self.server.shutdown()


def poll(url: str, key: str, until, attempts: int = 600):
    """GET `url` until `until(status, body)` holds (bounded: 600 tries, 0.2 s apart)."""
    for _ in range(attempts):
        status, body = call(url, key)
        if until(status, body):
            return status, body
        time.sleep(0.2)
    raise AssertionError(f"{url}: still {status} {body}")


def test_a_clip_in_progress_shows_its_status_then_its_result(deployment):
    worker, key = deployment["worker"], deployment["keys"]["acme"]
    server = HeldClipServer(CLIPS / "people_h264.mp4")
    try:
        body = json.dumps({"video_url": server.url, "camera_id": "gate"}).encode()
        status, accepted = call(
            f"{worker.url}/api/classify", key, body, {"Content-Type": "application/json"}
        )
        assert status == 202
        url = f"{worker.url}{accepted['poll']}"
        # The download is held, so the clip cannot get past fetching.
        status, pending = poll(url, key, lambda status, body: status == 200)
        assert pending["status"] == {"classify": "pending", "video": "pending"}
        assert pending["cameraId"] == "gate" and pending["error_code"] == 0
        server.release()
        _, done = poll(url, key, lambda status, body: body["status"]["classify"] != "pending")
        assert done["status"] == {"classify": "done", "video": "done"}
        assert "person" in done["labels"] and done["video"]["videoname"] == "people_h264.mp4"
    finally:
        server.close()
