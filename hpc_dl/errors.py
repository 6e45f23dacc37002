"""Errors a user can fix. The CLI turns them into one line and exit code 2."""


class UserError(Exception):
    """Bad input: a config field, a file, a rank. The message names it."""


class ConfigError(UserError):
    """A config value or key that does not validate."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the run."""


class JobError(Exception):
    """The job failed though its input was fine: a rank died, a collective timed out.
    The CLI prints the message (which names the ranks and hosts) and exits with code 1."""


class UnreadableFile(UserError):
    """A data file that cannot be decoded, found when a sample is loaded. Raised in a DataLoader
    worker, it reaches the main process rebuilt from the worker's formatted traceback (torch
    re-raises ``type(e)(text)``): only our message, the traceback's last line, is kept."""

    def __init__(self, message: str):
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].partition(": ")[2]
        super().__init__(message)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut at ``limit`` characters (the type's name when
    the message is empty): what a one-line error quotes of a library's multi-line one."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
