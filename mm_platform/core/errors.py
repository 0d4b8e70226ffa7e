"""What a user error is, defined once.

A ``UserError`` is wrong input the user can fix (config, source database, run date, data
past a configured threshold): the CLI prints its message as one line and exits 2, and a
Dagster step turns it into a ``dg.Failure`` with that line as the description (no retries:
a rerun meets the same input). Anything else is a bug: exit 1, traceback with ``--debug``.

``UserError`` derives from ``ValueError`` so code that already catches ``ValueError`` for bad
input keeps working.
"""

from __future__ import annotations

import functools

# Marks a step failure as a user error, so the CLI prints only its description.
USER_ERROR_METADATA_KEY = "mm_platform_user_error"
USER_ERROR_TRACEBACK_KEY = "traceback"


class UserError(ValueError):
    """Bad input; the message names what was wrong (table, column, field, value, row count)."""


class SourceError(UserError):
    """The source database, table or a configured column does not exist."""


def one_line(err: BaseException) -> str:
    """The message on one line (a user error must never spread over the terminal)."""
    return " ".join(str(err).split()) or type(err).__name__


def user_errors_as_failures(step):
    """Decorator for Dagster asset functions: a ``UserError`` raised inside the step becomes a
    ``dg.Failure`` whose description is the error's one line, not retried, marked so the CLI
    prints just that line (the stack is of no use to the user)."""

    @functools.wraps(step)
    def wrapper(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        except UserError as err:
            import traceback

            import dagster as dg

            # The stack is kept as metadata, for `--debug` and the UI, not in the description.
            raise dg.Failure(
                description=one_line(err), allow_retries=False,
                metadata={USER_ERROR_METADATA_KEY: type(err).__name__,
                          USER_ERROR_TRACEBACK_KEY: dg.MetadataValue.text("".join(traceback.format_exc()))},
            ) from None

    return wrapper
