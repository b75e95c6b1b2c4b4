"""Requests at the same time: PostgreSQL's constraints and row locks decide, never a 500."""

import asyncio

import anyio
import pytest
from sqlalchemy import text

from main import DB_TIMEOUT, engine
from test_main import ANN, create

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
    # PostgreSQL makes concurrent UPDATEs of a row wait for each other, with or
    # without main.py's row lock: the test after next shows what the lock is for
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


async def wait_until_backends_wait_for_a_lock(count):
    """Return once `count` backends of this database wait for a lock; fail after DB_TIMEOUT seconds."""
    query = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
    with anyio.fail_after(DB_TIMEOUT):
        while True:
            # a transaction per look: within one, pg_stat_activity stays as it was first read
            async with engine.connect() as conn:
                if await conn.scalar(query) >= count:
                    return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_request_queued_behind_a_delete_on_the_row_lock_is_404_not_500(client, stored, method):
    # main.py locks the row (SELECT ... FOR UPDATE) before it changes or deletes
    # it. Without that lock, a request reads the row, waits for the delete to
    # commit, then finds nothing left to change: a PATCH would be a 500
    # (StaleDataError, 0 rows updated), a second DELETE a 204 for a row it did not delete.
    ann = await create(client, ANN)
    delete = second = None
    try:
        # the test holds the row lock, so the requests queue in a known order
        async with engine.connect() as holder:
            await holder.execute(text("SELECT * FROM users WHERE id = :id FOR UPDATE"), {"id": ann["id"]})
            delete = asyncio.create_task(client.delete(f"/users/{ann['id']}"))
            await wait_until_backends_wait_for_a_lock(1)
            body = {"name": "Anna"} if method == "PATCH" else None
            second = asyncio.create_task(client.request(method, f"/users/{ann['id']}", json=body))
            await wait_until_backends_wait_for_a_lock(2)
            await holder.rollback()  # the delete goes first, then the second request
        responses = [await delete, await second]
    finally:
        # a failed wait: the requests end by lock_timeout (1 s), none is left running
        await asyncio.gather(*(task for task in (delete, second) if task), return_exceptions=True)

    assert [r.status_code for r in responses] == [204, 404]
    assert responses[1].json() == {"detail": "User not found"}
    assert await stored() == []
