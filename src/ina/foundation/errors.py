"""The one error type a command line turns into a single line and exit code 2."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from a user: the message names the flag or parameter, the rule, the value and the fix.

    Every room's own input errors derive from it, so the command line reports them all the same way
    (one line, exit code 2) and the HTTP layer as a 4xx.
    """
