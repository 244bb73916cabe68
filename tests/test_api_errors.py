"""The HTTP error table (api/errors.py) is what the API answers and what its documents say."""

import re
from pathlib import Path

import yaml
from aiohttp import web

from api.errors import ERRORS, INVALID, TIMEOUT, HttpError, error_middleware

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = yaml.safe_load((ROOT / "api" / "openapi.yaml").read_text())


def test_codes_are_unique():
    assert len({kind.code for kind in ERRORS}) == len(ERRORS)


def test_openapi_lists_exactly_the_table_codes():
    error_schema = OPENAPI["components"]["schemas"]["Error"]
    assert error_schema["properties"]["error"]["enum"] == [kind.code for kind in ERRORS]


def test_every_status_of_the_table_is_a_documented_response():
    statuses = {
        int(status)
        for path in OPENAPI["paths"].values()
        for operation in path.values()
        for status in operation.get("responses", {})
    }
    assert {kind.status for kind in ERRORS} <= statuses


def test_docs_api_md_has_one_row_per_code_with_its_status():
    text = (ROOT / "docs" / "api.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", text, flags=re.MULTILINE)
    assert rows == [(kind.code, str(kind.status)) for kind in ERRORS]


async def test_a_raised_error_becomes_json_with_the_kinds_status(aiohttp_client):
    async def refuse(request):
        raise HttpError(INVALID, "sync must be true or false", field="sync")

    async def late(request):
        raise HttpError(TIMEOUT, "no result", id="abc", poll="/api/result/abc")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/refuse", refuse)
    app.router.add_get("/late", late)
    client = await aiohttp_client(app)
    response = await client.get("/refuse")
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid",
        "message": "sync must be true or false",
        "field": "sync",
    }
    response = await client.get("/late")
    assert response.status == 504
    assert (await response.json())["poll"] == "/api/result/abc"
