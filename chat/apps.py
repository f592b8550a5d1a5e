from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from chat.services import accounts  # noqa: F401  (connects the logout hook)
        from chat.tiers import validate_table

        validate_table(settings.CHAT_TIERS)  # a malformed tier table fails at startup, not on a frame
