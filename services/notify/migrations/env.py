"""Alembic environment of notify: its own tables plus the chassis outbox/inbox."""

from services.chassis import bus  # noqa: F401 - registers the outbox and inbox tables on Base.metadata
from services.chassis.db import Base
from services.chassis.migrations import run_env
from services.notify.models import NotifyBase

run_env([NotifyBase.metadata, Base.metadata])  # type: ignore[arg-type]
