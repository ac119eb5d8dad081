"""The library's input errors: what a user (not a bug) got wrong.

Every error fastsam3d raises about its inputs (files, values, prompts, configs, checkpoints)
is an :class:`InputError`. The command line reports these as one line and exit code 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the file or value and the form expected."""
