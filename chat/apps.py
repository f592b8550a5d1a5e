from django.apps import AppConfig
from django.conf import settings


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: an AppConfig module is imported before the models exist.
        from chat.services import accounts  # noqa: F401  (connects the logout hook)
        from chat.services.compaction import compaction_config
        from chat.tiers import validate_table

        validate_table(settings.CHAT_TIERS)  # a malformed tier table fails at startup, not on a frame
        compaction_config()  # so do compaction settings out of range, not in the worker's first sweep
