from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: an AppConfig module is imported before the models exist.
        from agents.runner import get_supervisor
        from chat import publishing

        # Embedded mode and tests run agents in the server process: the services' run doorbells
        # reach this process's supervisor without the publish road importing the agents.
        publishing.set_local_runner(get_supervisor)
