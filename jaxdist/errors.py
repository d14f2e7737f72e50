"""The errors every part raises for a user mistake or a failed checkpoint write. A leaf module, so that any part
can import it."""


class ConfigError(ValueError):
    """A user mistake in the config or command line: reported as one line, exit code 2."""


EXIT_CODE_CHECKPOINT_WRITE = 4  # a checkpoint could not be written; the latest complete one is kept


class CheckpointWriteError(Exception):
    """A checkpoint save failed (disk full, a read-only directory): one line, exit code 4.

    Not a ConfigError: the command line was fine, the storage was not, and a rerun resumes once it is fixed."""
