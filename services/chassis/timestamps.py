"""datetime -> google.protobuf.Timestamp, the one conversion every servicer uses."""

from __future__ import annotations

import functools
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["to_timestamp"]


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
