"""Alembic environment of the gateway; run through ``services.chassis.migrations.upgrade``."""

from services.chassis.migrations import run_env
from services.gateway.models import GatewayBase

run_env(GatewayBase.metadata)
