"""The audit log is append-only in the database too, not only in Python (enterprise/models.py).

On PostgreSQL a row trigger refuses every UPDATE and DELETE of enterprise_auditentry, with two exceptions:
- the retention purge (enterprise/audit.py `audit_purge`), which says so with the transaction-local
  setting `SET LOCAL enterprise.audit_purge = 'on'`;
- the one UPDATE Django makes when an actor's account is deleted: `actor_id` set to NULL and nothing
  else changed (the entry keeps the copied username).
TRUNCATE is not a row operation and is not refused (test databases are emptied by it; only an owner of
the table may run it). SQLite (embedded mode) has no such trigger: the Python checks still apply.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

FORWARD = r"""
CREATE OR REPLACE FUNCTION enterprise_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF current_setting('enterprise.audit_purge', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit entries are append-only: DELETE refused (only the retention purge deletes)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.actor_id IS NULL AND (to_jsonb(NEW) - 'actor_id') = (to_jsonb(OLD) - 'actor_id') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit entries are append-only: UPDATE refused'
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER enterprise_auditentry_append_only
    BEFORE UPDATE OR DELETE ON enterprise_auditentry
    FOR EACH ROW EXECUTE FUNCTION enterprise_audit_append_only();
"""

BACKWARD = r"""
DROP TRIGGER IF EXISTS enterprise_auditentry_append_only ON enterprise_auditentry;
DROP FUNCTION IF EXISTS enterprise_audit_append_only();
"""


def _on_postgresql(sql: str) -> Any:
    def run(apps: Any, schema_editor: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)  # None: several statements in one go (psycopg)

    return run


class Migration(migrations.Migration):
    dependencies = [("enterprise", "0001_initial")]

    operations = [migrations.RunPython(_on_postgresql(FORWARD), _on_postgresql(BACKWARD))]
