"""What PostgreSQL refuses is a 4xx on any table, by one rule in main.py (database_error):
a conflict with stored rows is a 409, a value a column cannot hold a 400, and any other
broken constraint stays a 500 (a bug). The users table is altered here the way a
learner's second model would meet it; tests/test_second_model.py runs that model itself."""

import pytest
from sqlalchemy import text

from main import engine
from test_main import ANN, BOB, create

pytestmark = pytest.mark.anyio


async def test_delete_user_that_another_table_refers_to_is_409_and_keeps_the_user(client, stored, altered):
    # a foreign key without ON DELETE CASCADE, as a learner's posts table may have
    await altered("CREATE TABLE notes (id serial PRIMARY KEY, user_id integer NOT NULL REFERENCES users (id))", "DROP TABLE notes")
    ann = await create(client, ANN)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes (user_id) VALUES (:id)"), {"id": ann["id"]})

    response = await client.delete(f"/users/{ann['id']}")

    assert response.status_code == 409
    assert response.json() == {"detail": 'Key (id)=(1) is still referenced from table "notes".'}
    assert await stored() == [(1, "Ann", "ann@example.com")]


async def test_create_user_referring_to_a_missing_row_is_409_and_stores_nothing(client, stored, altered):
    # every new user refers to user 99 (a column the model does not know, with a default), who does not exist
    await altered("ALTER TABLE users ADD COLUMN mentor_id integer DEFAULT 99 REFERENCES users (id)",
                  "ALTER TABLE users DROP COLUMN mentor_id")

    response = await client.post("/users", json=ANN)

    assert response.status_code == 409
    assert response.json() == {"detail": 'Key (mentor_id)=(99) is not present in table "users".'}
    assert await stored() == []


async def test_update_user_to_a_value_the_column_cannot_hold_is_400_and_changes_nothing(client, stored, altered):
    # a column narrower than the schema allows (a learner's String(20) beside max_length=100)
    await create(client, BOB)
    await altered("ALTER TABLE users ALTER COLUMN name TYPE varchar(5)", "ALTER TABLE users ALTER COLUMN name TYPE varchar(100)")
    await engine.dispose()  # the pooled connections prepared their statements for varchar(100)

    response = await client.patch("/users/1", json={"name": "Bob the Builder"})

    assert response.status_code == 400
    assert response.json() == {"detail": "value too long for type character varying(5)"}
    assert await stored() == [(1, "Bob", "bob@example.com")]


async def test_duplicate_on_a_unique_constraint_the_learner_added_is_409_in_postgresqls_words(client, stored, altered):
    await altered("CREATE UNIQUE INDEX users_name_key ON users (name)", "DROP INDEX users_name_key")
    await create(client, ANN)

    response = await client.post("/users", json={"name": "Ann", "email": "ann.other@example.com"})

    assert response.status_code == 409
    assert response.json() == {"detail": "Key (name)=(Ann) already exists."}
    assert await stored() == [(1, "Ann", "ann@example.com")]
