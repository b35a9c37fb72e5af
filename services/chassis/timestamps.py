"""datetime <-> google.protobuf.Timestamp: the one conversion each way every servicer and handler uses."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from services.chassis.errors import InvalidArgument, Reason

__all__ = ["from_timestamp", "time_window", "to_timestamp"]


@functools.lru_cache(maxsize=1024)
def to_timestamp(at: datetime | None) -> Timestamp | None:
    """The Timestamp for ``at`` (naive means UTC), or None.

    Cached because many rows of one response share a time (a PutRecords batch converted the same
    datetime 1,000 times). Pass the result to message constructors or ``CopyFrom``, which copy it;
    never mutate it.
    """
    if at is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def from_timestamp(stamp: Timestamp, field: str) -> datetime:
    """The aware UTC datetime of a Timestamp a caller sent; INVALID_ARGUMENT naming ``field`` when it is outside
    the range a Timestamp may hold (years 1 to 9999) or its nanos are out of range, instead of an INTERNAL
    from the conversion."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(
            f"{field} is not a valid timestamp: seconds must lie between years 1 and 9999 and nanos in [0, 1e9)",
            reason=Reason.INVALID_ARGUMENT,
        ) from None


def time_window(request: Any) -> tuple[datetime, datetime]:
    """``[window_start, window_end)`` of a request with those two Timestamp fields; INVALID_ARGUMENT when either is
    missing or out of range, or the end is not after the start."""
    if not (request.HasField("window_start") and request.HasField("window_end")):
        raise InvalidArgument("window_start and window_end are required", metadata={"field": "window_start"})
    start = from_timestamp(request.window_start, "window_start")
    end = from_timestamp(request.window_end, "window_end")
    if end <= start:
        raise InvalidArgument("window_end must be after window_start", metadata={"field": "window_end"})
    return start, end
