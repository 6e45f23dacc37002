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
