"""Odd and hostile input: every answer is a clear 4xx, and nothing stored changes."""

import json

import pytest
from sqlalchemy import text

from main import INT_MAX, engine
from test_main import ANN, create

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "body",
    [
        {"email": "ann@example.com"},
        {"name": "x" * 101, "email": "ann@example.com"},
        {"name": None, "email": "ann@example.com"},
        {"name": 5, "email": "ann@example.com"},
        {"name": "Ann\x00", "email": "ann@example.com"},
    ],
    ids=["no-name", "long-name", "null-name", "number-name", "nul-in-name"],
)
async def test_create_user_invalid_body_is_422(client, stored, body):
    response = await client.post("/users", json=body)

    assert response.status_code == 422
    assert "detail" in response.json()
    assert await stored() == []


@pytest.mark.parametrize(
    "name",
    ["   ", "\u3000", "A\u0085nn", "\u202eAnn", "A\u200bnn", "Ann\u2028Lee", "A\ue000nn", "A\U000e0041nn"],
    ids=["only-spaces", "only-ideographic-space", "next-line-control", "right-to-left-override",
         "zero-width-space", "line-separator", "private-use", "tag-character"],
)
async def test_create_user_blank_or_invisible_name_is_422(client, stored, name):
    response = await client.post("/users", json={"name": name, "email": "ann@example.com"})

    assert response.status_code == 422
    assert await stored() == []


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("  Ann  ", "Ann"), ("Ann Lee", "Ann Lee"), ("山田\u3000太郎", "山田\u3000太郎"), ("Zoë\u00a0Ng", "Zoë\u00a0Ng")],
    ids=["surrounding-spaces-trimmed", "inner-space", "ideographic-space-inside", "no-break-space-inside"],
)
async def test_create_user_name_is_trimmed_and_keeps_inner_spaces(client, stored, sent, kept):
    await create(client, {"name": sent, "email": "ann@example.com"})

    assert await stored() == [(1, kept, "ann@example.com")]


async def test_create_user_email_domain_case_is_the_same_address(client, stored):
    await create(client, {"name": "Ann", "email": "ann@Example.COM"})

    response = await client.post("/users", json={"name": "Ann 2", "email": "ann@example.com"})

    assert response.status_code == 409
    assert await stored() == [(1, "Ann", "ann@example.com")]


def email_of_length(length):
    """A valid address of exactly `length` characters: 64 before the @, labels of at most 63."""
    domain = ".".join(["d" * 63, "d" * 63, "d" * (length - 64 - 1 - 63 - 1 - 63 - 1 - 4)]) + ".com"
    return "a" * 64 + "@" + domain


async def test_create_user_email_of_254_characters_is_stored(client, stored):
    email = email_of_length(254)

    response = await client.post("/users", json={"name": "Ann", "email": email})

    assert response.status_code == 201
    assert await stored() == [(1, "Ann", email)]


async def test_create_user_email_of_255_characters_is_422(client, stored):
    response = await client.post("/users", json={"name": "Ann", "email": email_of_length(255)})

    assert response.status_code == 422
    assert await stored() == []


async def test_create_user_stores_quotes_sql_and_unicode_verbatim(client, stored):
    name = "Robert'); DROP TABLE users;-- 🙂 שלום"

    created = await create(client, {"name": name, "email": "bobby@example.com"})

    assert created["name"] == name
    assert await stored() == [(1, name, "bobby@example.com")]


@pytest.mark.parametrize(
    "content",
    [b'{"name": "Ann", "email":', b'[{"name": "Ann", "email": "ann@example.com"}]', b'"Ann"', b"", b"\xff\xfe"],
    ids=["truncated-json", "json-array", "json-string", "empty", "utf16-byte-order-mark"],
)
async def test_create_user_malformed_body_is_422(client, stored, content):
    response = await client.post("/users", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert "detail" in response.json()
    assert await stored() == []


# Bytes the JSON decoder cannot read as text at all: FastAPI answers 400, as
# the schema documents ("\xc3\x28" opens a two-byte UTF-8 character and breaks it).
@pytest.mark.parametrize("content", [b"\xc3\x28", b'{"name": "\xff"}'], ids=["not-utf8", "not-utf8-in-a-string"])
async def test_create_user_body_not_utf8_is_400(client, stored, content):
    response = await client.post("/users", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
    assert await stored() == []


def expected_for_deep_json(content):
    """What a deeply nested body gets: 400 if Python's JSON decoder gives up on the depth, else 422."""
    try:
        json.loads(content)
    except RecursionError:  # Python 3.11-3.13, from about 1,000 levels
        return 400
    except json.JSONDecodeError:
        return 422
    return 422  # decoded (Python 3.14 and newer go much deeper), but it is not a user


@pytest.mark.parametrize(
    "content",
    [b"[" * 60_000, b"[" * 1_000 + b"]" * 1_000, b"[" * 30_000 + b"]" * 30_000,
     b'{"name": ' + b"[" * 30_000 + b"]" * 30_000 + b', "email": "ann@example.com"}'],
    ids=["unterminated-60000", "balanced-1000", "balanced-30000", "deep-name-30000"],
)
async def test_create_user_deeply_nested_body_is_400_or_422_never_500(client, stored, content):
    response = await client.post("/users", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == expected_for_deep_json(content)
    assert "detail" in response.json()
    assert await stored() == []


async def test_update_user_body_not_utf8_is_400_and_changes_nothing(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", content=b"\xc3\x28", headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert await stored() == [(1, "Ann", "ann@example.com")]


@pytest.mark.parametrize(
    "body",
    [{"email": None}, {"name": ""}, {"email": "nope"}, {"id": 2}, {"name": ["Ann"]}, {"name": "\u202eAnn"}],
    ids=["null-email", "empty-name", "bad-email", "id", "list-name", "invisible-name"],
)
async def test_update_user_invalid_body_is_422(client, stored, body):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", json=body)

    assert response.status_code == 422
    assert await stored() == [(1, "Ann", "ann@example.com")]


HUGE_BODY = b'{"name": "' + b"x" * 10_000_000 + b'", "email": "big@example.com"}'


async def test_create_user_huge_body_is_413(client, stored):
    response = await client.post("/users", content=HUGE_BODY, headers={"Content-Type": "application/json"})

    # refused from its Content-Length header, before reading the body; this
    # answer comes from Starlette, in plain text (see the README)
    assert response.status_code == 413
    assert response.text == "Content Too Large"
    assert await stored() == []


async def test_create_user_huge_streamed_body_is_413(client, stored):
    async def chunks():
        for start in range(0, len(HUGE_BODY), 65536):
            yield HUGE_BODY[start:start + 65536]

    response = await client.post("/users", content=chunks(), headers={"Content-Type": "application/json"})

    # no Content-Length: read up to the limit, then refused as JSON
    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert await stored() == []


async def test_update_user_huge_body_is_413_and_changes_nothing(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", content=HUGE_BODY, headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.text == "Content Too Large"
    assert await stored() == [(1, "Ann", "ann@example.com")]


async def test_create_user_odd_content_length_is_not_a_500(client, stored):
    headers = {"Content-Type": "application/json", "Content-Length": "²".encode("latin-1")}

    response = await client.post("/users", content=b"{}", headers=headers)

    assert response.status_code == 422
    assert await stored() == []


@pytest.mark.parametrize("user_id", ["0", "-1", str(INT_MAX + 1), str(2**63), "99999999999999999999999", "1.5", "abc"])
async def test_read_user_id_outside_integer_range_is_422(client, user_id):
    response = await client.get(f"/users/{user_id}")

    assert response.status_code == 422
    assert "detail" in response.json()


async def test_read_user_largest_integer_id_is_404(client):
    response = await client.get(f"/users/{INT_MAX}")

    assert response.status_code == 404


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"after_id": -1}, {"after_id": INT_MAX + 1}, {"after_id": 2**63}, {"limit": "ten"}, {"after_id": 1.5}],
)
async def test_fetch_users_bad_paging_is_422(client, params):
    response = await client.get("/users", params=params)

    assert response.status_code == 422
    assert "detail" in response.json()


async def test_fetch_users_default_page_is_50(client):
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (name, email) SELECT 'U' || g, 'u' || g || '@example.com' FROM generate_series(1, 60) g")
        )

    response = await client.get("/users")

    assert [u["id"] for u in response.json()] == list(range(1, 51))


async def test_fetch_users_pages_walk_every_user_once(client):
    users = [await create(client, {"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(7)]
    seen, after_id = [], 0

    while page := (await client.get("/users", params={"after_id": after_id, "limit": 3})).json():
        seen += page
        after_id = page[-1]["id"]

    assert seen == users
