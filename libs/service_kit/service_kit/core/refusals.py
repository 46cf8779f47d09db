"""Every way a service refuses a request, in one module: what is wrong with its input, that there
is no room or time for it now, or that its deadline passed. Model code raises these and knows
nothing of HTTP; service_kit.http.errors turns each into its status and error code, in one place.
No imports, so that a process that only prepares inputs (vision-api's decoding child) need not load
gRPC or Flask."""

from __future__ import annotations


class InputError(Exception):
    """An input the model cannot take; `code` is a stable slug for callers."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidInput(InputError):
    """Malformed: not what it claims to be (a corrupt image, a lone surrogate). 400."""


class InputTooLarge(InputError):
    """Over a limit (characters, words, pixels, memory). 413."""


class UnsupportedInput(InputError):
    """Of a kind the model does not take (not an image). 415."""


class UnusableInput(InputError):
    """Well-formed but empty for the model (no words, no pixels). 422."""


class InvalidTimeout(ValueError):
    """The request's timeout header is not a whole number of milliseconds, at least 1. 400."""


class Busy(Exception):
    """The worker has no room for this input now (memory, a decoder); worth retrying shortly. 503."""


# Why a request was shed (model_requests_shed_total's reasons). late_arrival is counted in front of
# Flask (service_kit.http.app), busy where a service raises Busy; the others are the batcher's.
SHED_REASONS = ("late_arrival", "queue_full", "predicted_late", "expired", "client_gone", "busy")


class Shed(Exception):
    """Refused before any model work: the model's queue is full, the request could not be answered
    in time, or its caller is gone. 503."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # one of SHED_REASONS


class DeadlineExceeded(Exception):
    """The request's deadline passed while its work was under way (decoding, the model call). 504."""
