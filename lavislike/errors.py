"""Errors that the CLI turns into one clear line instead of a traceback."""


class LavislikeError(Exception):
    """Base class: a user-facing problem (bad name, bad key, bad file)."""


class RegistryError(LavislikeError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(LavislikeError, ValueError):
    """A config file, key or value that cannot be used."""


class CheckpointError(LavislikeError, ValueError):
    """A checkpoint that cannot be read or does not match the model."""


class DataError(LavislikeError, ValueError):
    """Bad data: missing files, corrupt media, malformed annotations."""
