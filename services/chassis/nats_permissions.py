"""Who may do what on NATS: the one permission table, for ``steward run`` and for Kubernetes alike.

Every service connects as its own NATS user (an nkey) and may publish only its own event subjects
``steward.<service>.>``, consume only through its own durable consumers (whose filter subjects are
pinned here), and answer only on its own reply inboxes (``_INBOX.<service>.>``: the bus connects
with that inbox prefix, so one service cannot read another's JetStream deliveries or API replies).
Only dsr publishes ``steward.dsr.task.requested``. Dead letters: a service may write only the
dead-letter subjects of its *own* durables (``steward.dlq.<durable>``, the chassis consumer writes
them when it gives up on a message); nothing else under ``steward.dlq.>`` and nothing it could
replay. Operators' tooling (``ops``: doctor, the dlq replay script, nats-box) is the only user with
the whole JetStream API and every subject — it replays dead letters to their original subjects.

Stream provisioning: :meth:`services.chassis.bus.Bus.ensure_stream` creates ``STEWARD`` when it is
missing, so each service may call ``STREAM.INFO`` and ``STREAM.CREATE`` on ``STEWARD`` only. A create
never changes an existing stream (the server refuses a different configuration), so a service can
neither re-point nor shrink it; ``STREAM.UPDATE``/``DELETE``/``PURGE`` are the operators' alone
(production creates the stream up front with ``nats stream add``, deploy/k8s/README.md).

JetStream API subjects nats-py 2.x uses (``nats/js/manager.py``, ``nats/js/client.py``):
``stream_info`` -> ``$JS.API.STREAM.INFO.<stream>``; ``add_stream`` -> ``$JS.API.STREAM.CREATE.<stream>``;
``consumer_info`` -> ``$JS.API.CONSUMER.INFO.<stream>.<durable>``; ``add_consumer`` with a name and one
filter -> ``$JS.API.CONSUMER.CREATE.<stream>.<durable>.<filter>`` (the server refuses a body whose
filter differs from the one in the subject, which is what pins the filter), with several filters
``...CREATE.<stream>.<durable>``, and a config with only a durable name falls back to
``$JS.API.CONSUMER.DURABLE.CREATE.<stream>.<durable>`` (filter not pinned: the bus sets the name);
``fetch`` -> ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` with the reply on an inbox; ``ack``/``nak``/
``term`` -> the message's reply subject ``$JS.ACK.<stream>.<durable>.>``; ``publish`` -> the subject
itself, the PubAck arriving on an inbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DLQ_STREAM",
    "DSR_TASK_SUBJECT",
    "NATS_USERS",
    "OPS",
    "STREAM",
    "DurableConsumer",
    "NatsUser",
    "inbox_prefix",
    "permissions",
]

STREAM = "STEWARD"
DLQ_STREAM = "STEWARD_DLQ"  # the dead letters' longer-kept copy (services/chassis/streams.py)
DSR_TASK_SUBJECT = "steward.dsr.task.requested"
DLQ_PREFIX = "steward.dlq."
OPS = "ops"


def inbox_prefix(user: str) -> str:
    """The reply-inbox prefix a user connects with (nats-py ``inbox_prefix``); its subscriptions live below it."""
    return f"_INBOX.{user}"


@dataclass(frozen=True)
class DurableConsumer:
    """A durable pull consumer a service owns, and the subjects it filters on."""

    name: str
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class NatsUser:
    """One NATS identity: a Steward service, or the operators' tooling (``admin``)."""

    name: str
    publishes: tuple[str, ...] = ()
    consumes: tuple[DurableConsumer, ...] = ()
    listens: tuple[str, ...] = ()  # plain (core NATS) subscriptions, e.g. the gateway's revocation broadcast
    admin: bool = False

    def publish_allow(self) -> list[str]:
        """Subjects this user may publish to (events, dead letters, JetStream API and acks)."""
        if self.admin:
            return ["steward.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>"]
        allow = [f"steward.{self.name}.>", *self.publishes]
        allow += [f"$JS.API.STREAM.INFO.{STREAM}", f"$JS.API.STREAM.CREATE.{STREAM}"]
        allow.append(f"$JS.API.STREAM.INFO.{DLQ_STREAM}")  # the start-up check reads it; only ops creates it
        for durable in self.consumes:
            if len(durable.subjects) == 1:
                allow.append(f"$JS.API.CONSUMER.CREATE.{STREAM}.{durable.name}.{durable.subjects[0]}")
            else:
                allow.append(f"$JS.API.CONSUMER.CREATE.{STREAM}.{durable.name}")
            allow += [
                f"$JS.API.CONSUMER.INFO.{STREAM}.{durable.name}",
                f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable.name}",
                f"$JS.ACK.{STREAM}.{durable.name}.>",
                f"{DLQ_PREFIX}{durable.name}",
            ]
        return allow

    def subscribe_allow(self) -> list[str]:
        """Subjects this user may subscribe to: its own inboxes plus what it listens to."""
        if self.admin:
            return ["_INBOX.>", "steward.>"]
        return [f"{inbox_prefix(self.name)}.>", *self.listens]


NATS_USERS: tuple[NatsUser, ...] = (
    NatsUser("vault", consumes=(DurableConsumer("vault-dsr-tasks", (DSR_TASK_SUBJECT,)),)),
    NatsUser("gateway", listens=("steward.gateway.apikey.revoked",)),
    # dsr: the results of the tasks it sends (the vault's, notify's opt-out answers), hold releases, record updates.
    NatsUser(
        "dsr",
        consumes=(
            DurableConsumer(
                "dsr-task-results",
                (
                    "steward.vault.task.completed",
                    "steward.notify.optout.completed",
                    "steward.vault.subject.released",
                    "steward.vault.record.updated",
                ),
            ),
            DurableConsumer(
                "dsr-tenant-lifecycle",
                (
                    "steward.gateway.tenant.closed",
                    "steward.vault.tenant.closed",
                    "steward.gateway.tenant.reopened",
                    "steward.vault.tenant.reopened",
                ),
            ),
        ),
    ),
    # notify: dsr's opt-out commands and request events, the tenant's offboarding (dsr), legal notices and support
    # access (gateway): account notices to tenant contacts.
    NatsUser(
        "notify",
        consumes=(
            DurableConsumer(
                "notify-events",
                (
                    "steward.dsr.optout.requested",
                    "steward.dsr.request.changed",
                    "steward.dsr.request.reminder",
                    "steward.dsr.request.extended",
                    "steward.dsr.request.overdue",
                    "steward.dsr.offboarding.reminder",
                    "steward.dsr.tenant.certified",
                    "steward.gateway.legal.released",
                    "steward.gateway.support.requested",
                    "steward.gateway.support.granted",
                    "steward.gateway.support.revoked",
                ),
            ),
            # The gateway's access events: the PII-free access log behind BreachImpact.
            DurableConsumer("notify-access-log", ("steward.gateway.access.logged",)),
        ),
    ),
    NatsUser(OPS, admin=True),
)


def permissions(users: tuple[NatsUser, ...] = NATS_USERS) -> Mapping[str, dict[str, dict[str, list[str]]]]:
    """``{user: {"publish": {"allow": [...]}, "subscribe": {"allow": [...]}}}``, the nats-server shape."""
    return {
        user.name: {"publish": {"allow": user.publish_allow()}, "subscribe": {"allow": user.subscribe_allow()}}
        for user in users
    }
