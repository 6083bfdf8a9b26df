from django.conf import settings


def test_in_process_suites_run_on_the_embedded_default() -> None:
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert "hubbub-test-" in str(settings.BASE_DIR)
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
