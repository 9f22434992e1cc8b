"""Triton's queue policy and priority levels, from config.pbtxt's ``dynamic_batching`` and the request.

config.pbtxt (Triton's ``ModelDynamicBatching``), as Triton reads it:

- ``priority_levels`` (0: priorities off, one level) and ``default_priority_level`` (1 is the highest);
- ``default_queue_policy`` and ``priority_queue_policy[level]`` (a ``ModelQueuePolicy`` each):
  ``timeout_action`` REJECT (the request fails with Triton's "Request timeout expired", 503 / UNAVAILABLE)
  or DELAY (it stays queued, behind every request of its level that has not timed out),
  ``default_timeout_microseconds`` (0: none), ``allow_timeout_override`` (a request may ask for a shorter
  timeout, never a longer one: a longer one is capped, as in Triton) and ``max_queue_size`` (0: no limit
  besides ``BNFOLD_MAX_QUEUE_SIZE``).

Request parameters, as ``tritonclient``'s ``infer(priority=..., timeout=...)`` sends them: ``priority``
(0 or absent: the default level) and ``timeout`` (microseconds; 0 or absent: the policy's). bnfold is stricter
than Triton: a priority outside ``1..priority_levels``, a parameter that is not a non-negative integer, or a
timeout when the level does not allow overrides is a 400 naming the parameter and what is allowed (Triton
serves the first at the default level and answers 500 to the second).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc.model_config_pb2 import ModelQueuePolicy

from service.errors import bad_request

TIMED_OUT = "Request timeout expired"  # Triton's message for a request rejected by its queue timeout


class QueuePolicyError(ValueError):
    """A queue policy in config.pbtxt that cannot be served; the message names the file and field."""


@dataclass(frozen=True)
class LevelPolicy:
    """One priority level's ``ModelQueuePolicy``."""

    timeout_us: int = 0  # 0: no timeout
    delay: bool = False  # timeout_action DELAY (else REJECT)
    allow_override: bool = False
    max_queue_size: int = 0  # 0: no limit of its own

    @classmethod
    def of(cls, policy: Any) -> LevelPolicy:
        return cls(
            int(policy.default_timeout_microseconds),
            policy.timeout_action == ModelQueuePolicy.DELAY,
            bool(policy.allow_timeout_override),
            int(policy.max_queue_size),
        )


@dataclass(frozen=True)
class Ticket:
    """Where one request queues: its level (0-based, 0 first) and its queue timeout (None: none)."""

    level: int = 0
    timeout_s: float | None = None
    delay: bool = False
    max_queue_size: int = 0


@dataclass(frozen=True)
class QueuePolicy:
    """The priority levels of one model version and each level's queue policy."""

    levels: tuple[LevelPolicy, ...] = (LevelPolicy(),)
    default_level: int = 1  # 1-based, as in config.pbtxt
    priorities: bool = False  # priority_levels > 0

    @classmethod
    def from_config(cls, batching: Any, path: Path) -> QueuePolicy:
        """The policy of a ``ModelDynamicBatching`` message; errors name ``path`` and the field."""
        count = int(batching.priority_levels)
        default = int(batching.default_priority_level) or 1
        if count and not 1 <= default <= count:
            raise QueuePolicyError(
                f"{path}: dynamic_batching.default_priority_level is {default}; expected 1..{count} (priority_levels)"
            )
        for level in batching.priority_queue_policy:
            if not 1 <= level <= max(count, 1):
                raise QueuePolicyError(
                    f"{path}: dynamic_batching.priority_queue_policy has level {level}; expected 1..{max(count, 1)}"
                )
        base = LevelPolicy.of(batching.default_queue_policy)
        levels = tuple(
            LevelPolicy.of(batching.priority_queue_policy[n]) if n in batching.priority_queue_policy else base
            for n in range(1, max(count, 1) + 1)
        )
        return cls(levels, default if count else 1, count > 0)

    def ticket(self, priority: int | None, timeout_us: int | None) -> Ticket:
        """The queue of a request with these parameters (None: not sent); 400 for values not allowed."""
        level = self.default_level
        if priority:
            if not self.priorities:
                raise bad_request(f"parameter 'priority' is {priority}; this model has no priority levels (send 0)")
            if priority > len(self.levels):
                raise bad_request(
                    f"parameter 'priority' is {priority}; expected 0 (default level {self.default_level}) or one "
                    f"of the levels 1..{len(self.levels)} (1 is the highest)"
                )
            level = priority
        policy = self.levels[level - 1]
        timeout = policy.timeout_us
        if timeout_us:
            if not policy.allow_override:
                raise bad_request(
                    f"parameter 'timeout' is {timeout_us} us; the queue policy of priority level {level} does not "
                    "allow a request timeout (allow_timeout_override is false)"
                )
            timeout = min(timeout_us, timeout) if timeout else timeout_us
        return Ticket(level - 1, timeout / 1e6 if timeout else None, policy.delay, policy.max_queue_size)


def request_integer(name: str, value: Any) -> int | None:
    """A request parameter ``priority`` or ``timeout`` (None when absent) as a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"parameter {name!r} must be a non-negative integer, got {value!r}")
    return value
