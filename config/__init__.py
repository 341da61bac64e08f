"""Settings read from the environment, validated once at start."""

from technic.config.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError"]
