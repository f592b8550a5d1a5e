"""The GIN index that full-text search over message text reads (chat/search.py), on PostgreSQL only.

Its expression is the one chat/search.py's `_MessageVector` writes, to_tsvector('simple', text), so the planner
can use it; the 'simple' configuration is explained there. Built CONCURRENTLY (so the migration is not atomic):
a deployment with millions of messages keeps writing them while it builds. SQLite (the embedded default) has no
such index and searches with the fallback, so there the migration does nothing.
"""

from typing import Any

from django.db import migrations

INDEX = "chat_message_text_fts"


def create_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON chat_message"
        " USING gin (to_tsvector('simple'::regconfig, text))"
    )


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False
    dependencies = [
        ("chat", "0005_conversation_management"),
    ]

    operations = [migrations.RunPython(create_index, drop_index, elidable=False)]
