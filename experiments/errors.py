"""Errors meant for the user, and building objects from the config without burying them.

The suite's own errors (a wrong folder layout, a missing data.root, bad data, missing weights, an unknown run)
carry a message that says what to do. Hydra's ``instantiate`` wraps whatever the target raises in an
``InstantiationException`` whose text repeats the config; :func:`instantiate` re-raises the target's own
exception instead, so the message reaches the user as written.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate


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
