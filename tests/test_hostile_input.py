"""Odd and hostile input: every answer is a clear 4xx, and nothing stored changes."""

import json

import pytest
from sqlalchemy import text

from main import INT_MAX, engine
from test_main import ANN, assert_422, create

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"email": "ann@example.com"}, "missing"),
        ({"name": "x" * 101, "email": "ann@example.com"}, "string_too_long"),
        ({"name": None, "email": "ann@example.com"}, "string_type"),
        ({"name": 5, "email": "ann@example.com"}, "string_type"),
        ({"name": "Ann\x00", "email": "ann@example.com"}, "value_error"),
    ],
    ids=["no-name", "long-name", "null-name", "number-name", "nul-in-name"],
)
async def test_create_user_invalid_body_is_422(client, stored, body, error_type):
    response = await client.post("/users", json=body)

    assert_422(response, ("body", "name"), error_type, sent=body.get("name"))
    assert await stored() == []


@pytest.mark.parametrize(
    "name",
    ["A\u0085nn", "\u202eAnn", "A\u200bnn", "A\ufeffnn", "Ann\u2028Lee", "Ann\u2029Lee", "A\ue000nn", "A\U000e0041nn",
     "\u3164", "\u2800\u2800", "\u115f\u1160", "\uffa0", "\u200d", "\u00ad\u200c", "A\U00013439nn"],
    ids=["next-line-control", "right-to-left-override", "zero-width-space", "byte-order-mark", "line-separator",
         "paragraph-separator", "private-use", "tag-character-outside-a-flag", "hangul-filler", "braille-blanks",
         "hangul-choseong-jungseong-fillers", "halfwidth-hangul-filler", "joiner-alone", "soft-hyphen-and-joiner-alone",
         "egyptian-format-control-new-in-unicode-15"],
)
async def test_create_user_blank_or_invisible_name_is_422(client, stored, name):
    response = await client.post("/users", json={"name": name, "email": "ann@example.com"})

    assert_422(response, ("body", "name"), "value_error", sent=name)
    assert await stored() == []


@pytest.mark.parametrize("name", ["   ", "\u3000"], ids=["only-spaces", "only-ideographic-space"])
async def test_create_user_name_of_spaces_only_is_422(client, stored, name):
    response = await client.post("/users", json={"name": name, "email": "ann@example.com"})

    assert_422(response, ("body", "name"), "string_too_short")  # nothing left once trimmed
    assert await stored() == []


async def test_create_user_name_with_a_lone_surrogate_is_422(client, stored):
    # JSON can spell half of a UTF-16 pair, "\ud800", which no UTF-8 text can hold
    content = b'{"name": "A\\ud800nn", "email": "ann@example.com"}'

    response = await client.post("/users", content=content, headers=JSON)

    assert_422(response, ("body", "name"), "string_unicode")
    assert await stored() == []


# the flag of Wales: a black flag, the tag letters "gbwls" and an end tag. Tags
# are invisible format characters (Cf), allowed only inside such a flag
WALES = "Gwen \U0001f3f4\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("  Ann  ", "Ann"), ("Ann Lee", "Ann Lee"), ("山田\u3000太郎", "山田\u3000太郎"), ("Zoë\u00a0Ng", "Zoë\u00a0Ng"),
     ("می\u200cخواهم", "می\u200cخواهم"), ("क्\u200dष", "क्\u200dष"), ("👩\u200d👩\u200d👧", "👩\u200d👩\u200d👧"),
     ("Hoch\u00adzeit", "Hoch\u00adzeit"), (WALES, WALES), ("Ann \U0001fae8", "Ann \U0001fae8"), ("A\u0378nn", "A\u0378nn")],
    ids=["surrounding-spaces-trimmed", "inner-space", "ideographic-space-inside", "no-break-space-inside",
         "persian-zero-width-non-joiner", "hindi-zero-width-joiner", "emoji-zero-width-joiner-sequence", "soft-hyphen",
         "subdivision-flag", "emoji-newer-than-python-3-11", "unassigned-on-every-python"],
)
async def test_create_user_name_is_trimmed_and_keeps_inner_spaces_and_joiners(client, stored, sent, kept):
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

    assert_422(response, ("body", "email"), "value_error", sent=email_of_length(255))
    assert await stored() == []


async def test_create_user_stores_quotes_sql_and_unicode_verbatim(client, stored):
    name = "Robert'); DROP TABLE users;-- 🙂 שלום"

    created = await create(client, {"name": name, "email": "bobby@example.com"})

    assert created["name"] == name
    assert await stored() == [(1, name, "bobby@example.com")]


@pytest.mark.parametrize(
    ("content", "loc", "error_type"),
    [(b'{"name": "Ann", "email":', ("body", 24), "json_invalid"),
     (b'[{"name": "Ann", "email": "ann@example.com"}]', ("body",), "model_attributes_type"),
     (b'"Ann"', ("body",), "model_attributes_type"), (b"", ("body",), "missing"),
     (b"\xff\xfe", ("body", 0), "json_invalid")],
    ids=["truncated-json", "json-array", "json-string", "empty", "utf16-byte-order-mark"],
)
async def test_create_user_malformed_body_is_422(client, stored, content, loc, error_type):
    response = await client.post("/users", content=content, headers=JSON)

    assert_422(response, loc, error_type, sent="Ann")
    assert await stored() == []


# Bytes the JSON decoder cannot read as text at all: FastAPI answers 400, as
# the schema documents ("\xc3\x28" opens a two-byte UTF-8 character and breaks it).
@pytest.mark.parametrize("content", [b"\xc3\x28", b'{"name": "\xff"}'], ids=["not-utf8", "not-utf8-in-a-string"])
async def test_create_user_body_not_utf8_is_400(client, stored, content):
    response = await client.post("/users", content=content, headers=JSON)

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
    assert await stored() == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
async def test_create_user_body_in_utf16_or_utf32_is_read_as_json(client, stored, encoding):
    # JSON may be sent in UTF-16 or UTF-32 (RFC 8259 asks for UTF-8, RFC 4627 allowed them);
    # Python's decoder tells them apart by their zero bytes: the same user, stored once
    response = await client.post("/users", content=json.dumps(ANN).encode(encoding), headers=JSON)

    assert response.status_code == 201
    assert await stored() == [(1, "Ann", "ann@example.com")]


def expected_for_deep_json(content):
    """What a deeply nested body gets: 400 if Python's JSON decoder gives up on the depth, else 422 and its error."""
    try:
        value = json.loads(content)
    except RecursionError:  # Python 3.11-3.13, from about 1,000 levels (3.13: a few thousand)
        return 400, None
    except json.JSONDecodeError as exc:
        return 422, (("body", exc.pos), "json_invalid")
    # decoded (Python 3.14 and newer go much deeper), but it is not a user
    return 422, (("body",), "model_attributes_type") if isinstance(value, list) else (("body", "name"), "string_type")


def nested_name(depth):
    """A user whose name is a list nested `depth` levels deep: [[[...]]]."""
    return b'{"name": ' + b"[" * depth + b"]" * depth + b', "email": "ann@example.com"}'


@pytest.mark.parametrize(
    "content",
    [b"[" * 60_000, b"[" * 1_000 + b"]" * 1_000, b"[" * 30_000 + b"]" * 30_000, nested_name(30_000)],
    ids=["unterminated-60000", "balanced-1000", "balanced-30000", "deep-name-30000"],
)
async def test_create_user_deeply_nested_body_is_400_or_422_never_500(client, stored, content):
    response = await client.post("/users", content=content, headers=JSON)

    status, error = expected_for_deep_json(content)
    if status == 400:
        assert response.status_code == 400
        assert response.json() == {"detail": "There was an error parsing the body"}
    else:
        assert_422(response, *error)
    assert await stored() == []


async def deepest_nesting_the_app_decodes(client):
    """The deepest nested_name() that the app's JSON decoder reads on this Python (deeper: a 400), at most 30,000."""
    decodes, too_deep = 1, 30_000  # 30,000 levels: 60 kB, under the 64 KiB limit
    if (await client.post("/users", content=nested_name(too_deep), headers=JSON)).status_code != 400:
        return too_deep
    while too_deep - decodes > 1:  # halves each time: at most 15 requests
        depth = (decodes + too_deep) // 2
        if (await client.post("/users", content=nested_name(depth), headers=JSON)).status_code == 400:
            too_deep = depth
        else:
            decodes = depth
    return decodes


async def test_create_user_nested_as_deep_as_the_decoder_reads_is_422_not_500(client, stored):
    # On every Python, a body this deep reaches validation (Python 3.11: about
    # 950 levels). FastAPI's own 422 would send it back as "input", and its
    # encoder, one call per level, would overflow: a RecursionError, a 500.
    depth = await deepest_nesting_the_app_decodes(client)

    response = await client.post("/users", content=nested_name(depth), headers=JSON)

    assert_422(response, ("body", "name"), "string_type")
    assert await stored() == []


async def test_update_user_body_not_utf8_is_400_and_changes_nothing(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", content=b"\xc3\x28", headers=JSON)

    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}
    assert await stored() == [(1, "Ann", "ann@example.com")]


@pytest.mark.parametrize(
    ("body", "error_type"),
    [({"email": None}, "string_type"), ({"name": ""}, "string_too_short"), ({"email": "nope"}, "value_error"),
     ({"id": 2}, "extra_forbidden"), ({"name": ["Ann"]}, "string_type"), ({"name": "\u202eAnn"}, "value_error")],
    ids=["null-email", "empty-name", "bad-email", "id", "list-name", "invisible-name"],
)
async def test_update_user_invalid_body_is_422(client, stored, body, error_type):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", json=body)

    [(field, value)] = body.items()
    assert_422(response, ("body", field), error_type, sent=value if isinstance(value, str) else None)
    assert await stored() == [(1, "Ann", "ann@example.com")]


HUGE_BODY = b'{"name": "' + b"x" * 10_000_000 + b'", "email": "big@example.com"}'


async def test_create_user_huge_body_is_413(client, stored):
    response = await client.post("/users", content=HUGE_BODY, headers=JSON)

    # refused once 64 KiB of it has arrived, as JSON like every answer of the app
    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert await stored() == []


async def test_create_user_huge_streamed_body_is_413(client, stored):
    async def chunks():
        for start in range(0, len(HUGE_BODY), 65536):
            yield HUGE_BODY[start:start + 65536]

    response = await client.post("/users", content=chunks(), headers=JSON)

    # no Content-Length: read up to the limit, then refused as JSON
    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert await stored() == []


def body_of_size(size):
    """A create-user body of exactly `size` bytes: a name of x's, far too long."""
    head, tail = b'{"name": "', b'", "email": "big@example.com"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_create_user_body_of_exactly_64_kib_is_read_and_its_long_name_is_422(client, stored):
    response = await client.post("/users", content=body_of_size(64 * 1024), headers=JSON)

    assert_422(response, ("body", "name"), "string_too_long")
    assert await stored() == []


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
async def test_create_user_body_one_byte_over_64_kib_is_413(client, stored, streamed):
    body = body_of_size(64 * 1024 + 1)

    async def chunks():
        yield body[:40_000]
        yield body[40_000:]

    response = await client.post("/users", content=chunks() if streamed else body, headers=JSON)

    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert await stored() == []


async def test_update_user_huge_body_is_413_and_changes_nothing(client, stored):
    ann = await create(client, ANN)

    response = await client.patch(f"/users/{ann['id']}", content=HUGE_BODY, headers=JSON)

    assert response.status_code == 413
    assert response.json() == {"detail": "Content Too Large"}
    assert await stored() == [(1, "Ann", "ann@example.com")]


async def test_create_user_odd_content_length_is_not_a_500(client, stored):
    headers = {"Content-Type": "application/json", "Content-Length": "²".encode("latin-1")}

    response = await client.post("/users", content=b"{}", headers=headers)

    assert_422(response, ("body", "name"), "missing")
    assert await stored() == []


@pytest.mark.parametrize(
    ("user_id", "error_type"),
    [("0", "greater_than_equal"), ("-1", "greater_than_equal"), (str(INT_MAX + 1), "less_than_equal"),
     (str(2**63), "less_than_equal"), ("99999999999999999999999", "less_than_equal"), ("1.5", "int_parsing"),
     ("abc", "int_parsing")],
)
async def test_read_user_id_outside_integer_range_is_422(client, user_id, error_type):
    response = await client.get(f"/users/{user_id}")

    assert_422(response, ("path", "user_id"), error_type, sent=user_id)


async def test_read_user_largest_integer_id_is_404(client):
    response = await client.get(f"/users/{INT_MAX}")

    assert response.status_code == 404


@pytest.mark.parametrize(
    ("params", "error_type"),
    [({"limit": 0}, "greater_than_equal"), ({"after_id": -1}, "greater_than_equal"),
     ({"after_id": INT_MAX + 1}, "less_than_equal"), ({"after_id": 2**63}, "less_than_equal"),
     ({"limit": "ten"}, "int_parsing"), ({"after_id": 1.5}, "int_parsing")],
)
async def test_fetch_users_bad_paging_is_422(client, params, error_type):
    response = await client.get("/users", params=params)

    [(name, value)] = params.items()
    assert_422(response, ("query", name), error_type, sent=value)


async def test_fetch_users_default_page_is_50(client):
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (name, email) SELECT 'U' || g, 'u' || g || '@example.com' FROM generate_series(1, 60) g")
        )

    response = await client.get("/users")

    assert [u["id"] for u in response.json()] == list(range(1, 51))


async def test_fetch_users_pages_walk_every_user_once(client):
    users = [await create(client, {"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(7)]
    # new versions of two rows at the end of the table: pages follow the ids, not the table's order
    for i in (0, 3):
        users[i] = (await client.patch(f"/users/{users[i]['id']}", json={"name": f"Changed {i}"})).json()
    seen, after_id = [], 0

    for _ in range(10):  # 7 users, 3 a page: the walk ends by the fourth page, an empty one
        page = (await client.get("/users", params={"after_id": after_id, "limit": 3})).json()
        if not page:
            break
        seen += page
        after_id = page[-1]["id"]

    assert seen == users
    assert page == []
