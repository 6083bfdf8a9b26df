from django.apps import AppConfig


class ConversionsConfig(AppConfig):
    name = "hubbub.conversions"
    label = "conversions"
    default_auto_field = "django.db.models.BigAutoField"
