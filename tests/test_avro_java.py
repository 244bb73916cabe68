"""Our Avro codec against Apache Avro's own Java implementation, byte for byte.

Any consumer of our topics in another language will read them with an Avro library; the
single-object header (marker, fingerprint byte order) and the body must be exactly what Avro's
`BinaryMessageEncoder` writes, or those consumers fail. dev/avro-check is a tiny Java program
on org.apache.avro:avro that this test builds with Maven and runs.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest

from streams.codec import RESULT, SCHEMA_DIR, default_codec
from streams.results import result_from_json
from streams.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

CHECKER = PROJECT_ROOT / "dev" / "avro-check"
SOURCE = CHECKER / "src" / "main" / "java" / "AvroCheck.java"
CLASSES = CHECKER / "target" / "classes"
JARS = CHECKER / "target" / "dependency"
EXAMPLE = Path(__file__).parent / "fixtures" / "result-example.json"

RunJava = Callable[..., subprocess.CompletedProcess[bytes]]


def _build_is_current() -> bool:
    built = CLASSES / "AvroCheck.class"
    if not built.exists() or not any(JARS.glob("avro-*.jar")):
        return False
    newest_input = max(SOURCE.stat().st_mtime, (CHECKER / "pom.xml").stat().st_mtime)
    return built.stat().st_mtime >= newest_input


@pytest.fixture(scope="module")
def avro_check() -> RunJava:
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if java is None or mvn is None:
        pytest.skip("java and mvn are needed to build Apache Avro's Java checker (dev/avro-check)")
    if not _build_is_current():
        build = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(CHECKER / "pom.xml"),
                "compile",
                "dependency:copy-dependencies",
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if build.returncode != 0:
            pytest.fail(
                f"building dev/avro-check failed:\n{build.stdout.decode()}{build.stderr.decode()}"
            )

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            [java, "-cp", f"{CLASSES}:{JARS}/*", "AvroCheck", *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done

    return run


@pytest.fixture
def result() -> dict[str, Any]:
    """The published example result, plus metadata values of every branch of its union."""
    record = result_from_json(json.loads(EXAMPLE.read_text()))
    record["metadata"] |= {"night": True, "ratio": 0.25, "zone": None}
    return record


def test_java_reads_our_bytes_as_the_same_record(
    avro_check: RunJava, result: dict[str, Any], tmp_path: Path
) -> None:
    codec = default_codec()
    ours = codec.serialize(RESULT, result)
    (tmp_path / "result.bin").write_bytes(ours)

    printed = avro_check("decode", str(SCHEMA_DIR), RESULT.name, str(tmp_path / "result.bin")).stdout

    schema = codec.schemas[RESULT.name].parsed
    (read_by_java,) = fastavro.json_reader(io.StringIO(printed.decode()), schema)
    assert read_by_java == result
    assert codec.serialize(RESULT, read_by_java) == ours


def test_java_writes_the_bytes_our_codec_writes(
    avro_check: RunJava, result: dict[str, Any], tmp_path: Path
) -> None:
    codec = default_codec()
    schema = codec.schemas[RESULT.name]
    with (tmp_path / "result.json").open("w") as out:
        fastavro.json_writer(out, schema.parsed, [result])

    avro_check(
        "encode", str(SCHEMA_DIR), RESULT.name, str(tmp_path / "result.json"), str(tmp_path / "java.bin")
    )

    written_by_java = (tmp_path / "java.bin").read_bytes()
    assert written_by_java[:10] == b"\xc3\x01" + schema.fingerprint
    assert written_by_java == codec.serialize(RESULT, result)
    assert codec.parse(written_by_java, expect=RESULT) == result
