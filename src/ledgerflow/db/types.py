"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer
from sqlalchemy import String as _String
from sqlalchemy import Text as _Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.sqlite import JSON as SQLiteJSON
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import TypeCompiler
from sqlalchemy.types import TypeDecorator

#: Auto-incrementing 64-bit id (SQLite only auto-increments INTEGER PRIMARY KEY).
Id = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1  # the largest Id: a larger one is refused as bad input, not sent to the driver


class JsonText(SQLiteJSON[Any]):
    """SQLite JSON declared `TEXT`, so that SQLite stores the encoded document as it is.

    A column declared `JSON` has NUMERIC affinity (https://www.sqlite.org/datatype3.html):
    SQLite stored a document that is a bare number as a number, `1.0` as 1, `-0.0` as 0 and
    2**63 as a REAL (its digits lost). Values are bound and read as SQLAlchemy's SQLite JSON
    (which also reads the numbers such a column already holds); migration 0017 redeclares the
    columns of existing databases.
    """

    cache_ok = True


@compiles(JsonText, "sqlite")
def _json_text_ddl(type_: JsonText, compiler: TypeCompiler, **kw: Any) -> str:
    return "TEXT"


#: JSON document: JSONB on PostgreSQL, JSON text in a TEXT column on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql").with_variant(JsonText(), "sqlite")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """`value` with what no database text column can hold (NUL, lone surrogates) as U+FFFD.

    PostgreSQL refuses NUL in text and JSON, and UTF-8 cannot encode a lone surrogate; text
    from outside (mail subjects, PDF text, error messages) is kept readable rather than lost.
    """
    if "\x00" not in value and (value.isascii() or not _UNSTORABLE.search(value)):
        return value
    return _UNSTORABLE.sub("\ufffd", value)


class String(TypeDecorator[str]):
    """VARCHAR(n) whose bound values are made storable (see `storable_text`)."""

    impl = _String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return storable_text(value) if isinstance(value, str) else value


class Text(String):
    """TEXT whose bound values are made storable (see `storable_text`)."""

    impl = _Text
    cache_ok = True


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC instant: `timestamptz` on PostgreSQL, naive-UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected an aware datetime, got {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]
