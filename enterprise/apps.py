from django.apps import AppConfig


class EnterpriseConfig(AppConfig):
    """What enterprise workspaces pay for: signed webhooks, the audit log, analytics, SLA reports, export."""

    name = "enterprise"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The audit log's signal handlers import the models: they can only be connected once apps are ready.
        from enterprise import signals

        signals.connect()
