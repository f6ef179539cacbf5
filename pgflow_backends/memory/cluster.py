"""In-memory instances and the leader lease: who is alive, and who runs cluster-wide duties.

Not thread-safe on its own; InMemoryBackend holds its lock around every call.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs

from pgflow.records import Instance, InstanceInfo, Liveness

ONLINE = "online"
OFFLINE = "offline"


class InstanceTable:
    """Registered instances by id, and a single leader lease with an expiry."""

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._leader: str | None = None
        self._lease_until: datetime | None = None

    def register(self, info: InstanceInfo, now: datetime) -> bool:
        """Insert or update; True when an earlier, different incarnation was registered."""
        earlier = self._instances.get(info.instance_id)
        # The flows it serves go in as a keyword dict: mypy's attrs plugin cannot type a
        # `converter=tuple` field's argument.
        served: dict[str, Any] = {"flows": info.flows}
        self._instances[info.instance_id] = Instance(
            instance_id=info.instance_id,
            status=ONLINE,
            heartbeat_at=now,
            started_at=now,
            hostname=info.hostname,
            pid=info.pid,
            queues=dict(info.queues),
            incarnation=info.incarnation,
            **served,
        )
        return earlier is not None and earlier.incarnation != info.incarnation

    def holds(self, instance_id: str, incarnation: str) -> bool:
        """True when `instance_id` is registered by `incarnation`: the fence of a claim."""
        instance = self._instances.get(instance_id)
        return instance is not None and instance.incarnation == incarnation

    def heartbeat(self, instance_id: str, incarnation: str, now: datetime) -> Liveness:
        """Refresh and mark online, unless another incarnation holds the id (DISPLACED)."""
        instance = self._instances.get(instance_id)
        if instance is None:
            return Liveness.PRESUMED_DEAD
        if incarnation and instance.incarnation != incarnation:
            return Liveness.DISPLACED
        self._instances[instance_id] = attrs.evolve(instance, status=ONLINE, heartbeat_at=now)
        return Liveness.ALIVE if instance.status == ONLINE else Liveness.PRESUMED_DEAD

    def mark_offline(self, instance_id: str, incarnation: str = "") -> None:
        instance = self._instances.get(instance_id)
        if instance is not None and (not incarnation or instance.incarnation == incarnation):
            self._instances[instance_id] = attrs.evolve(instance, status=OFFLINE)

    def set_abandoned(self, instance_id: str, count: int) -> None:
        instance = self._instances.get(instance_id)
        if instance is not None:
            self._instances[instance_id] = attrs.evolve(instance, abandoned=count)

    def mark_stale_offline(self, cutoff: datetime) -> list[str]:
        """Mark online instances whose heartbeat is older than `cutoff` offline; return them."""
        stale = sorted(
            instance.instance_id
            for instance in self._instances.values()
            if instance.status == ONLINE and instance.heartbeat_at < cutoff
        )
        for instance_id in stale:
            self.mark_offline(instance_id)
        return stale

    def online(self) -> set[str]:
        return {i.instance_id for i in self._instances.values() if i.status == ONLINE}

    def list(self) -> list[Instance]:
        return sorted(self._instances.values(), key=lambda i: (i.status != ONLINE, i.instance_id))

    def acquire(self, instance_id: str, ttl: float, now: datetime) -> bool:
        """Take the lease if free, expired or already ours, and extend it to now + ttl."""
        free = self._leader is None or self._lease_until is None or self._lease_until <= now
        if not free and self._leader != instance_id:
            return False
        self._leader = instance_id
        self._lease_until = now + timedelta(seconds=ttl)
        return True

    def release(self, instance_id: str) -> None:
        if self._leader == instance_id:
            self._leader = None
            self._lease_until = None
