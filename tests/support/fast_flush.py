"""A faster reset between transactional tests (`django_db(transaction=True)`, most of this suite: the code
under test commits, publishes after commit and works from other threads). Django empties every table after
each such test with one TRUNCATE of all of them; PostgreSQL's TRUNCATE gives each table a new file, a fixed
cost of milliseconds per table that, over ~70 tables, made the reset ~0.25 s: more than most tests take.
A DELETE of a table that holds a few rows costs microseconds. Django's foreign keys on PostgreSQL are
DEFERRABLE INITIALLY DEFERRED and Django's execute_sql_flush runs the flush in one transaction, so deleting
every table in any order leaves nothing dangling at commit. A flush that resets sequences
(`reset_sequences=True`) keeps TRUNCATE. Only the test process's flush changes: the product's code and the
servers the e2e tests start are untouched."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql.operations import DatabaseOperations

_truncating_flush = DatabaseOperations.sql_flush


def _deleting_flush(
    self: DatabaseOperations, style: Any, tables: Any, *, reset_sequences: bool = False, allow_cascade: bool = False
) -> list[str]:
    if reset_sequences or not tables:
        return _truncating_flush(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
    # The audit log refuses DELETE unless the transaction says it purges (enterprise migration 0002); TRUNCATE,
    # which row triggers do not see, never had to. A test reset is such a purge.
    return ["SET LOCAL enterprise.audit_purge = 'on';"] + [f"DELETE FROM {self.quote_name(t)};" for t in tables]


def install() -> None:
    DatabaseOperations.sql_flush = _deleting_flush  # type: ignore[method-assign]
