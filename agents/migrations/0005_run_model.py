from django.db import migrations, models


class Migration(migrations.Migration):
    """The run's model and time to first token, kept with the run for workspace analytics."""

    dependencies = [
        ("agents", "0004_run_traces"),
    ]

    operations = [
        migrations.AddField(
            model_name="agentrun",
            name="model",
            field=models.CharField(blank=True, default="", max_length=100),
        ),
        migrations.AddField(
            model_name="agentrun",
            name="first_token_ms",
            field=models.IntegerField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="agentrun",
            index=models.Index(fields=["conversation", "created_at"], name="agents_run_conv_created"),
        ),
    ]
