"""The errors of bad input: what the user gave (config, data, files, permissions, checkpoints)
is wrong, as opposed to a bug. The command line reports them as one line; anything else keeps
its traceback.

Dimension letters: none (this module handles no arrays).

This module imports nothing from align, so that any module may raise these.
"""

from __future__ import annotations

import errno


class InputError(Exception):
    """A problem in what the user gave (config, data, files, permissions, checkpoints), reported
    as one line naming it."""


class ConfigError(InputError, ValueError):
    """A bad config: the message names the key (or file) and what is wrong."""

    def __init__(self, message: str, *, key: str | None = None, override: str | None = None):
        super().__init__(message)
        self.key = key  # the dotted config key at fault, when there is one
        self.override = override  # the command-line override at fault, when there is one


class DataError(InputError, ValueError):
    """Bad data: a row, file or dataset the user pointed at, named with what is wrong."""


class CheckpointError(InputError, ValueError):
    """A checkpoint the user pointed at (a run's, or a Hugging Face one) is unreadable or does
    not fit the run."""


# What a command line reports as one line: these, and the file-system errors of paths the user
# gave. Anything else, ValueError included, is a bug and keeps its traceback.
INPUT_ERRORS = (InputError, FileNotFoundError, PermissionError, IsADirectoryError,
                NotADirectoryError)

# The errno values of writes that fail because of the file system (full, over quota, too large,
# read-only), which a command line reports as one line.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
