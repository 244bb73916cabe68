"""The architecture as the import graph shows it (docs: README "The tree").

- `streams/` (pipeline) and `api/` (HTTP) never import each other, but for the one wiring
  module, streams/wiring.py;
- `api/` uses no Kafka client: the worker's service turns Kafka failures into ClipGuard errors;
- the steps and stages run without Faust or Kafka;
- the runtime packages never import development tooling at module level, and tests never
  import the benchmark (but its own test, test_bench.py).
"""

import ast
from pathlib import Path

import pytest

from streams.settings import PROJECT_ROOT

WIRING = "streams/wiring.py"
KAFKA_CLIENTS = ("aiokafka", "faust", "kafka", "confluent_kafka", "mode")


def modules(folder):
    return sorted(p.relative_to(PROJECT_ROOT) for p in (PROJECT_ROOT / folder).rglob("*.py"))


def imports(path: Path, top_level_only=False) -> set[str]:
    tree = ast.parse((PROJECT_ROOT / path).read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def uses(path, packages, top_level_only=False):
    return sorted(
        name
        for name in imports(path, top_level_only)
        if any(name == p or name.startswith(p + ".") for p in packages)
    )


@pytest.mark.parametrize("path", [p for p in modules("streams") if str(p) != WIRING], ids=str)
def test_the_pipeline_does_not_import_the_http_api(path):
    assert uses(path, ("api",)) == []


@pytest.mark.parametrize("path", modules("api"), ids=str)
def test_the_http_api_does_not_import_a_kafka_client_or_the_faust_app(path):
    assert uses(path, (*KAFKA_CLIENTS, "streams.app", "streams.service", "streams.wiring")) == []


@pytest.mark.parametrize("path", [Path("streams/pipeline.py"), *modules("streams/stages")], ids=str)
def test_steps_and_stages_are_free_of_faust_and_kafka(path):
    assert uses(path, KAFKA_CLIENTS) == []


@pytest.mark.parametrize("path", [*modules("streams"), *modules("api")], ids=str)
def test_runtime_code_does_not_import_dev_tooling_at_import_time(path):
    assert uses(path, ("devtools", "bench", "tests"), top_level_only=True) == []


@pytest.mark.parametrize(
    "path", [p for p in modules("tests") if p.name != "test_bench.py"], ids=str
)
def test_tests_do_not_import_the_benchmark(path):
    assert uses(path, ("bench",)) == []


def test_the_wiring_module_is_what_joins_the_two_sides():
    assert uses(Path(WIRING), ("api",)) and uses(Path(WIRING), ("streams.app",))
