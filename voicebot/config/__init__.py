"""One typed settings object for the whole gateway (see `voicebot.config.settings`)."""

from voicebot.config.settings import ServerSettings, Settings, VadSettings, load_settings

__all__ = ["ServerSettings", "Settings", "VadSettings", "load_settings"]
