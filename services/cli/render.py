"""Output of the operator commands: protobuf messages as JSON objects or as short human-readable text.

JSON keeps the proto field names (``tenant_id``, not ``tenantId``) and prints unset scalars too, so a
script can rely on every key being there. Text output shortens enum names (``TENANT_STATE_ACTIVE`` ->
``active``) and timestamps (UTC, to the second).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["as_json", "duration_text", "enum_label", "fields_text", "table", "timestamp_text"]


def as_json(message: Message) -> dict[str, Any]:
    """A message as a JSON-ready dict with proto field names and every scalar present."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def enum_label(message: Message, field: str) -> str:
    """The short lower-case name of an enum field's value: ``state`` of a Tenant -> ``active``."""
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    assert descriptor is not None, f"{field} is not an enum field"
    value = getattr(message, field)
    name = descriptor.values_by_number[value].name if value in descriptor.values_by_number else str(value)
    # buf's STANDARD rules prefix every value with the enum's name: TenantState -> TENANT_STATE_.
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"
    return name.removeprefix(prefix).lower()


def timestamp_text(message: Message, field: str) -> str:
    """A timestamp field as ``2026-01-31T12:00:00Z``, or ``-`` when unset."""
    if not message.HasField(field):
        return "-"
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime().replace(microsecond=0).isoformat() + "Z"


def duration_text(seconds: int) -> str:
    """``5400`` -> ``1h30m``."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


def fields_text(rows: Iterable[tuple[str, object]]) -> str:
    """Aligned ``label  value`` lines."""
    pairs = [(label, str(value)) for label, value in rows]
    width = max((len(label) for label, _ in pairs), default=0)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in pairs)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, empty: str = "(none)") -> str:
    """A fixed-width table; ``empty`` when there are no rows."""
    if not rows:
        return empty
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(headers[i]), *(len(row[i]) for row in cells)) for i in range(len(headers))]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
