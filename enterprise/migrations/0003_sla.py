# The SLA reports' stored measurements (enterprise/sla.py).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("enterprise", "0002_audit_append_only"),
    ]

    operations = [
        migrations.CreateModel(
            name="SlaMeasurement",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("workspace_id", models.UUIDField(blank=True, null=True)),
                ("tier", models.CharField(blank=True, default="", max_length=16)),
                ("day", models.DateField()),
                ("objective", models.CharField(max_length=32)),
                ("good", models.BigIntegerField(default=0)),
                ("total", models.BigIntegerField(default=0)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
            ],
            options={
                "ordering": ["-day", "objective"],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("workspace_id__isnull", False)),
                        fields=("workspace_id", "day", "objective"),
                        name="uniq_sla_workspace_day",
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("workspace_id__isnull", True)),
                        fields=("day", "objective"),
                        name="uniq_sla_platform_day",
                    ),
                ],
            },
        ),
    ]
