"""Exceptions that map to the documented exit codes (see README "Exit codes")."""
from __future__ import annotations


class IcsscanError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_code = 2


class UsageError(IcsscanError):
    """Bad flags, missing folder, no images, too few readable images (exit 2)."""

    exit_code = 2


class ModelError(IcsscanError):
    """Model missing, invalid, tampered with or incompatible (exit 3)."""

    exit_code = 3


class NotFittedError(IcsscanError, ValueError):
    """A method that needs a trained detector was called before `fit` or `load`."""

    exit_code = 3
