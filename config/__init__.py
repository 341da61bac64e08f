"""Settings read from the environment, validated once at start."""

from config.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError"]
