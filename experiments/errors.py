"""Errors meant for the user, and building objects from the config without burying them.

The suite's own errors (a wrong folder layout, a missing data.root, bad data, missing weights, an unknown run)
carry a message that says what to do. Hydra's ``instantiate`` wraps whatever the target raises in an
``InstantiationException`` whose text repeats the config; :func:`instantiate` re-raises the target's own
exception instead, so the message reaches the user as written.

Every such error subclasses :class:`UserError` (or, below ``experiments/``, carries ``user_error = True``);
``run.py`` prints its message alone, without a traceback, and exits with status 2
(``HYDRA_FULL_ERROR=1`` shows the traceback as well).
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate


#: exit status of a run stopped by a :class:`UserError`
USER_ERROR_EXIT = 2


class UserError(Exception):
    """An error whose message tells the user what to change (a key, a path, a command); no traceback needed."""

    user_error = True


def is_user_error(err: BaseException) -> bool:
    """True for :class:`UserError` and for the lower layers' errors marked ``user_error = True``."""
    return bool(getattr(err, "user_error", False))


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, raising the target's own exception rather than Hydra's wrapper."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
