from django.db import migrations, models


class Migration(migrations.Migration):
    """Ended runs remember when their agent_delta events were compacted, and the compaction finds the runs
    still due through a partial index (runs from before this migration are all due: the first passes work
    through them)."""

    dependencies = [
        ("agents", "0005_run_model"),
    ]

    operations = [
        migrations.AddField(
            model_name="agentrun",
            name="deltas_compacted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="agentrun",
            index=models.Index(
                condition=models.Q(("deltas_compacted_at__isnull", True), ("status__in", ["completed", "cancelled"])),
                fields=["finished_at"],
                name="agents_run_compact_due",
            ),
        ),
    ]
