from django.apps import AppConfig


class EnterpriseConfig(AppConfig):
    """What enterprise workspaces pay for: signed webhooks, the audit log, analytics, SLA reports, export."""

    name = "enterprise"
    default_auto_field = "django.db.models.BigAutoField"
