"""The one retry policy for calls to a model server: which failures are transient, how long to wait, how often.

A failure is transient when the server could not be reached or did not answer in time, or answered with
one of ``statuses`` (408, 409, 429 and every 5xx by default).  Attempt ``n`` (from 0) waits the server's
``Retry-After``/``Retry-After-Ms`` when it sends one (at most ``max_wait_s``), else
``min(backoff_s * 2**n, max_backoff_s)`` less a random ``jitter`` fraction, so that concurrent callers spread out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from puyu.errors import ConfigError

TRANSIENT_STATUSES = frozenset({408, 409, 429, *range(500, 600)})


@dataclass(frozen=True)
class RetryPolicy:
    """How :class:`~puyu.client.OpenAIClient` retries.

    Attributes:
        max_retries: retries after the first attempt (0: none).
        backoff_s: the first wait; each retry doubles it.
        max_backoff_s: the longest computed wait.
        jitter: the wait is cut by up to this fraction at random.
        max_wait_s: the longest wait a server's ``Retry-After`` may ask for; a longer one is not retried.
        statuses: the HTTP statuses worth retrying (connection errors and timeouts always are).
    """

    max_retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    jitter: float = 0.25
    max_wait_s: float = 60.0
    statuses: frozenset[int] = field(default=TRANSIENT_STATUSES)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0 or not 0 <= self.jitter <= 1:
            raise ConfigError(f"retry: max_retries and the backoffs must be >= 0 and jitter in [0, 1], got {self}")

    def wait(self, attempt: int, status: int | None, headers=None) -> float | None:
        """Seconds to wait before retrying failed attempt ``attempt`` (from 0), or None when it must not be retried.

        Args:
            status: the HTTP status, or None when no answer came (connection error, timeout).
            headers: the failed response's headers, for ``Retry-After``.
        """
        if attempt >= self.max_retries or (status is not None and status not in self.statuses):
            return None
        asked = retry_after(headers)
        if asked is not None:
            return asked if asked <= self.max_wait_s else None
        return min(self.backoff_s * 2**attempt, self.max_backoff_s) * (1 - self.jitter * random.random())


def retry_after(headers) -> float | None:
    """The wait a server asks for in ``Retry-After-Ms`` or ``Retry-After`` (seconds), if any; HTTP dates are ignored."""
    for name, scale in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name) if headers is not None else None
        if value is None:
            continue
        try:
            return max(float(value) / scale, 0.0)
        except ValueError:
            continue
    return None
