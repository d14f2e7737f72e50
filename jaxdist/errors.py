"""The errors every part raises for a user mistake or a failed checkpoint write. A leaf module, so that any part
can import it."""


class ConfigError(ValueError):
    """A user mistake in the config or command line: reported as one line, exit code 2."""


EXIT_CODE_CHECKPOINT_WRITE = 4  # a checkpoint could not be written; the latest complete one is kept


class CheckpointWriteError(Exception):
    """A checkpoint save failed (disk full, a read-only directory): one line, exit code 4.

    Not a ConfigError: the command line was fine, the storage was not, and a rerun resumes once it is fixed."""


EXIT_CODE_INPUT = 6  # reading the data failed mid-run; the latest complete checkpoint is kept


class InputError(Exception):
    """Reading a batch failed mid-run, in one of the input pipeline's threads or workers (a file that passed
    the start-up check cannot be decoded, a disk that went away): one line with the original message, exit
    code 6, after the metrics are flushed and the saves in flight finish. A rerun resumes once the data is
    fixed."""
