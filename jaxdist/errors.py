"""The error every part raises for a user mistake. A leaf module, so that any part can import it."""


class ConfigError(ValueError):
    """A user mistake in the config or command line: reported as one line, exit code 2."""
