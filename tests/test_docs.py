"""What the documents promise: the READMEs' examples answer as shown, each departure
names a test that exists, and /docs shows every answer with a body that works."""

import os
import re
import shutil
import sys
from pathlib import Path

import anyio
import pytest

from test_local_postgres import start_app

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent.parent
READMES = ["README.md", "README.ru.md"]


def curl_examples(readme):
    """Each curl command in a README, with the answer shown under it (a line starting "# ")."""
    lines = (HERE / readme).read_text(encoding="utf-8").splitlines()
    examples = []
    for start, line in enumerate(lines):
        if line.startswith("curl "):
            end = start
            while lines[end].endswith("\\"):
                end += 1
            assert lines[end + 1].startswith("# "), f"{readme}: no answer shown under {line!r}"
            examples.append(("\n".join(lines[start:end + 1]), lines[end + 1].removeprefix("# ")))
    return examples


# On Windows, `bash` may be WSL's, where 127.0.0.1 is not Windows': the workflow runs the PowerShell form there
@pytest.mark.skipif(sys.platform == "win32" or not (shutil.which("curl") and shutil.which("bash")),
                    reason="runs the examples with bash and curl, not on Windows")
@pytest.mark.parametrize("readme", READMES)
async def test_readme_curl_examples_answer_as_shown(client, readme):
    examples = curl_examples(readme)
    app_process, url = await anyio.to_thread.run_sync(lambda: start_app(HERE, env=dict(os.environ)))
    try:
        answers = []
        for command, _ in examples:  # one after another, on the empty table the client fixture left
            command = command.replace("http://127.0.0.1:8000", url)
            result = await anyio.run_process(["bash", "-c", command])
            answers.append(result.stdout.decode().rstrip("\n"))
    finally:
        app_process.terminate()
        app_process.wait(timeout=30)

    assert len(examples) == 7
    assert answers == [shown for _, shown in examples]


def all_test_names():
    """Every test function's name in the repository's test files."""
    names = set()
    for path in [HERE / "test_main.py", *(HERE / "tests").glob("test_*.py")]:
        names |= set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(encoding="utf-8"), re.MULTILINE))
    return names


@pytest.mark.parametrize("readme", READMES)
def test_readme_departures_name_tests_that_exist(readme):
    text = (HERE / readme).read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_\w+)`", text))

    assert len(named) >= 15
    assert named <= all_test_names(), f"{readme} names tests that do not exist: {sorted(named - all_test_names())}"


async def test_openapi_documents_every_answer_of_every_route(client):
    paths = (await client.get("/openapi.json")).json()["paths"]

    assert set(paths["/users"]["post"]["responses"]) == {"201", "400", "409", "413", "422", "503"}
    assert set(paths["/users"]["get"]["responses"]) == {"200", "422", "503"}
    assert set(paths["/users/{user_id}"]["get"]["responses"]) == {"200", "404", "422", "503"}
    assert set(paths["/users/{user_id}"]["patch"]["responses"]) == {"200", "400", "404", "409", "413", "422", "503"}
    assert set(paths["/users/{user_id}"]["delete"]["responses"]) == {"204", "404", "422", "503"}


async def test_openapi_examples_are_what_the_app_really_answers(client):
    openapi = (await client.get("/openapi.json")).json()
    post = openapi["paths"]["/users"]["post"]["responses"]
    example = openapi["components"]["schemas"]["UserCreate"]["examples"][0]

    # "Try it out" starts from a body that works as it is
    assert example == {"name": "Ann", "email": "ann@example.com"}
    assert (await client.post("/users", json=example)).status_code == 201
    # each error names its detail, and its body is {"detail": ...}
    assert post["409"]["description"] == (await client.post("/users", json=example)).json()["detail"]
    assert post["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Message"}
    assert "Retry-After" in post["503"]["headers"]


async def test_openapi_update_fields_are_optional_but_not_nullable(client):
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["UserUpdate"]

    assert "required" not in schema
    assert schema["properties"]["name"]["type"] == "string"
    assert schema["properties"]["email"]["type"] == "string"


async def test_openapi_patterns_are_ones_standard_tools_can_use(client):
    # a JSON Schema "pattern" is ECMA-262 without Unicode classes (\p{...}): Python's re,
    # JavaScript and schemathesis all read it; the name rule is a validator instead
    text = (await client.get("/openapi.json")).text
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]

    assert "\\p{" not in text
    assert "pattern" not in schemas["UserCreate"]["properties"]["name"]
    assert schemas["UserCreate"]["properties"]["name"]["maxLength"] == 100
