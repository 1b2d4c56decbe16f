"""The fallback policy: which active triple edits to consolidate without naming them.

A :class:`ConsolidationPolicy` chooses edits by age (``older_than``), by how many active
edits the namespace keeps on the retrieval path (``beyond``), or both (an edit is chosen
when either rule picks it), at most ``batch_size`` per call, oldest first. Only edits that
``consolidate`` can write are chosen (see ``consolidate.unusable``): free-text and erase
edits, and edits that are not active (superseded, retracted, consolidated), never are.

>>> select(memory, ConsolidationPolicy(older_than="7d", beyond=100))
>>> memory.consolidate(model, policy={"older_than": 7 * 86400})
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from memedit.checks import optional_whole_number, whole_number
from memedit.errors import ArgumentError
from memedit.store import StoredEdit

from .consolidate import ConsolidationReport, unusable
from .settings import METHODS

DEFAULT_BATCH_SIZE = 50
UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhms])\s*$")


def parse_duration(text: str, name: str = "older_than") -> timedelta:
    """``"7d"``, ``"12h"``, ``"30m"`` or ``"90s"`` as a timedelta; ArgumentError naming ``name`` otherwise."""
    match = DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ArgumentError(name, f"must be a number with a unit, d, h, m or s (such as 7d, 12h, 30m, 90s); got {text!r}")
    return timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])


def _age(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        age = value
    elif isinstance(value, str):
        age = parse_duration(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        age = timedelta(seconds=value)
    else:
        raise ArgumentError("older_than", f"must be seconds (a number), a datetime.timedelta or a duration such as '7d'; "
                                          f"got {type(value).__name__} {value!r}")
    if age is not None and age < timedelta(0):
        raise ArgumentError("older_than", f"must be 0 or more (an age), got {value!r}")
    return age


def format_age(age: timedelta) -> str:
    """A timedelta in the largest whole unit: 7d, 12h, 30m, 90s (or 1.5s)."""
    seconds = age.total_seconds()
    for unit, size in UNITS.items():
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class ConsolidationPolicy:
    """Which active triple edits ``select`` chooses, oldest first:

    - ``older_than``: those created longer ago than this (seconds, a ``timedelta`` or a
      duration such as ``"7d"``; kept as a ``timedelta``);
    - ``beyond``: all but the newest ``beyond`` active edits of the namespace (every active
      edit counts, free-text and erase ones too, though only triple edits are chosen);
    - ``batch_size``: at most this many per call.

    With both rules, an edit either rule picks is chosen; with neither, every active triple
    edit is (``batch_size`` at a time).
    """

    older_than: timedelta | None = None
    beyond: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "older_than", _age(self.older_than))
        optional_whole_number("beyond", self.beyond)
        whole_number("batch_size", self.batch_size, 1)

    def describe(self) -> str:
        """The policy in words, for reports."""
        rules = []
        if self.older_than is not None:
            rules.append(f"created more than {format_age(self.older_than)} ago")
        if self.beyond is not None:
            rules.append(f"older than the newest {self.beyond} active edits")
        return f"{' or '.join(rules) or 'every active triple edit'}, at most {self.batch_size} a batch"


def as_policy(policy: ConsolidationPolicy | dict[str, Any]) -> ConsolidationPolicy:
    """``policy`` as a ConsolidationPolicy (given as one, or as a dict of its fields)."""
    if isinstance(policy, ConsolidationPolicy):
        return policy
    if not isinstance(policy, dict):
        raise ArgumentError("policy", f"must be a ConsolidationPolicy or a dict of its fields, got {type(policy).__name__}")
    known = [f.name for f in fields(ConsolidationPolicy)]
    unknown = sorted(set(policy) - set(known), key=str)
    if unknown:
        raise ArgumentError("policy", f"has unknown field(s) {', '.join(map(repr, unknown))}; its fields are {', '.join(known)}")
    return ConsolidationPolicy(**policy)


def created(edit: StoredEdit) -> datetime:
    """When ``edit`` was created (a timestamp without a zone is read as UTC)."""
    when = datetime.fromisoformat(edit.created_at)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def select(memory, policy: ConsolidationPolicy | dict[str, Any], now: datetime | None = None) -> list[StoredEdit]:
    """The active triple edits of ``memory``'s namespace that ``policy`` chooses, oldest
    first, at most ``policy.batch_size``. ``now`` (default: the current time) is when
    ``older_than`` is measured from."""
    policy = as_policy(policy)
    active = sorted(memory.list(status="active"), key=created)  # stable: the order added breaks ties
    due = len(active) if policy.older_than is None and policy.beyond is None else 0
    if policy.beyond is not None:
        due = max(due, len(active) - policy.beyond)
    if policy.older_than is not None:
        cutoff = (now or datetime.now(timezone.utc)) - policy.older_than
        due = max(due, sum(created(e) < cutoff for e in active))  # a prefix: ``active`` is oldest first
    return [e for e in active[:due] if unusable(e) is None][:policy.batch_size]


def nothing_matched(policy: ConsolidationPolicy | dict[str, Any], method: str) -> ConsolidationReport:
    """The report of a policy that chose no edit: nothing was written."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return ConsolidationReport(method, reason=f"the policy ({as_policy(policy).describe()}) matched no edit: "
                                              f"no active triple edit meets it, so nothing was written")
