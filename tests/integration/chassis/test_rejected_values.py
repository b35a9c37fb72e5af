"""Defence in depth behind the id check: a value the database refuses (PostgreSQL and a NUL in text) maps to
INVALID_ARGUMENT, not INTERNAL, whichever layer raised it."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from services.chassis.errors import status_for


def test_a_value_postgresql_refuses_is_invalid_argument(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DataError) as caught:
            conn.execute(sa.text("select :value"), {"value": "rec\x00ord"})
    finally:
        engine.dispose()
    for exc in (caught.value, caught.value.orig):  # wrapped by SQLAlchemy, and psycopg's own
        code, message, _ = status_for(exc)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "NUL" in message and "rec" not in message
