"""What model code says is wrong with an input, knowing nothing of HTTP: service_kit.http.errors turns
each kind into its status, in one place. A module of its own, with no imports, so that a process
that only prepares inputs (vision-api's decoding child) need not load gRPC or Flask."""

from __future__ import annotations


class InputError(Exception):
    """An input the model cannot take; `code` is a stable slug for callers."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidInput(InputError):
    """Malformed: not what it claims to be (a corrupt image, a lone surrogate)."""


class InputTooLarge(InputError):
    """Over a limit (characters, pixels, memory)."""


class UnsupportedInput(InputError):
    """Of a kind the model does not take (not an image)."""


class UnusableInput(InputError):
    """Well-formed but empty for the model (no words, no pixels)."""


class Busy(Exception):
    """The worker has no room for this input now; worth retrying shortly."""
