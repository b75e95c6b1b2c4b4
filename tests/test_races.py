"""Requests at the same time: PostgreSQL's constraints and row locks decide, never a 500."""

import asyncio

import pytest

from test_main import create

pytestmark = pytest.mark.anyio


async def test_create_user_concurrent_duplicates_give_one_201(client, stored):
    responses = await asyncio.gather(
        *(client.post("/users", json={"name": f"Racer {i}", "email": "race@example.com"}) for i in range(20))
    )

    codes = sorted(r.status_code for r in responses)
    assert codes == [201] + [409] * 19
    rows = await stored()
    assert len(rows) == 1 and rows[0][2] == "race@example.com"


async def test_create_user_concurrent_distinct_emails_all_land(client, stored):
    responses = await asyncio.gather(
        *(client.post("/users", json={"name": f"U{i}", "email": f"u{i}@example.com"}) for i in range(30))
    )

    assert [r.status_code for r in responses] == [201] * 30
    assert sorted(row[2] for row in await stored()) == sorted(f"u{i}@example.com" for i in range(30))


async def test_update_user_concurrent_email_changes_leave_one_of_them(client, stored):
    ann = await create(client, {"name": "Ann", "email": "ann@example.com"})
    emails = [f"ann{i}@example.com" for i in range(10)]

    responses = await asyncio.gather(*(client.patch(f"/users/{ann['id']}", json={"email": e}) for e in emails))

    assert [r.status_code for r in responses] == [200] * 10
    [(_, _, email)] = await stored()
    assert email in emails


async def test_delete_racing_read_and_update_gives_404s_not_500s(client, stored):
    ids = [(await create(client, {"name": f"U{i}", "email": f"u{i}@example.com"}))["id"] for i in range(10)]
    requests = []
    for user_id in ids:
        requests += [
            client.get(f"/users/{user_id}"),
            client.patch(f"/users/{user_id}", json={"name": "Changed"}),
            client.delete(f"/users/{user_id}"),
            client.delete(f"/users/{user_id}"),
            client.patch(f"/users/{user_id}", json={"name": "Changed again"}),
        ]

    responses = await asyncio.gather(*requests)

    assert {r.status_code for r in responses} <= {200, 204, 404}
    assert sum(r.status_code == 204 for r in responses) == 10  # each user deleted once
    assert await stored() == []
