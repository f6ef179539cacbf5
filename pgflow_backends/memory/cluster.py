"""In-memory instances and the leader lease: who is alive, and who runs cluster-wide duties.

Not thread-safe on its own; InMemoryBackend holds its lock around every call.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from pgflow.records import Instance, InstanceInfo

ONLINE = "online"
OFFLINE = "offline"


class InstanceTable:
    """Registered instances by id, and a single leader lease with an expiry."""

    def __init__(self) -> None:
        self._instances: dict[str, Instance] = {}
        self._leader: str | None = None
        self._lease_until: datetime | None = None

    def register(self, info: InstanceInfo, now: datetime) -> None:
        self._instances[info.instance_id] = Instance(
            instance_id=info.instance_id,
            status=ONLINE,
            heartbeat_at=now,
            started_at=now,
            hostname=info.hostname,
            pid=info.pid,
            queues=dict(info.queues),
        )

    def heartbeat(self, instance_id: str, now: datetime) -> bool:
        """Refresh and mark online; False when it was unknown or had been marked offline."""
        instance = self._instances.get(instance_id)
        if instance is None:
            return False
        self._instances[instance_id] = attrs.evolve(instance, status=ONLINE, heartbeat_at=now)
        return instance.status == ONLINE

    def mark_offline(self, instance_id: str) -> None:
        instance = self._instances.get(instance_id)
        if instance is not None:
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
