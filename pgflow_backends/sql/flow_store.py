"""The FlowStore methods of the SQL backends: distributed flow runs (see pgflow.backend).

A mixin of SQLBackend: each method is one transaction that hands its connection to a
`FlowSettler`. The job methods that can end a task (fail, snooze, cancel, rescue) call
`_settler` too, so a task ending discarded or cancelled fails its run in the same commit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Connection

from pgflow.backend import RunStart
from pgflow.graph.ready import check_deadline
from pgflow.graph.shape import SUBFLOW, FlowPlan
from pgflow.identifiers import validate_workflow_id
from pgflow.records import (
    Job,
    JobRef,
    NewJob,
    RunRecord,
    RunState,
    StepState,
    StepStatus,
    SuccessorClaim,
    TaskCompletion,
)
from pgflow.serialization import check_size, dumps, loads
from pgflow_backends.sql.flow_rows import CoreFlowRows, FlowRows
from pgflow_backends.sql.flow_statements import FlowStatements
from pgflow_backends.sql.flows import FlowSettler
from pgflow_backends.sql.statements import Statements

__all__ = ["SQLFlowStore"]

#: SQLite has no notifications between processes: a waiter re-reads the run this often.
_POLL_MIN, _POLL_MAX = 0.005, 0.1

_T = TypeVar("_T")

#: Step states a restart copies.
_SETTLED = ("completed", "skipped")


class SQLFlowStore:
    """FlowStore over the SQLBackend's connection handling (a mixin: see SQLBackend)."""

    max_payload_bytes: int | None
    _s: Statements
    _f: FlowStatements

    # Provided by SQLBackend.
    def _tx(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def _translated(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    def _token(self, ref: JobRef) -> Any:
        raise NotImplementedError

    def _insert_tasks(self, connection: Connection, new: list[NewJob], *, own: bool) -> list[Job]:
        raise NotImplementedError

    def _announce(self, connection: Connection, queues: set[str], *, own: bool) -> None:
        raise NotImplementedError

    def get_run(self, workflow_id: str) -> RunRecord | None:
        raise NotImplementedError

    # -- hooks -----------------------------------------------------------------------------

    def _announce_run(self, connection: Connection, workflow_id: str) -> None:
        """Tell waiters that a run finished, once the transaction commits (default: none;
        waiters poll)."""

    def _flow_rows(self, connection: Connection) -> FlowRows:
        """The batched row operations of a settle (PostgreSQL: one statement per batch)."""
        return CoreFlowRows(connection, self._f)

    def _settler(self, connection: Connection, *, own: bool = True) -> FlowSettler:
        return FlowSettler(
            connection,
            self._f,
            self._s,
            self._flow_rows(connection),
            insert_jobs=lambda new: self._insert_tasks(connection, new, own=own),
            announce=lambda queues: self._announce(connection, queues, own=own),
            run_finished=lambda workflow_id: self._announce_run(connection, workflow_id),
            limit=self.max_payload_bytes,
            token=self._token,
        )

    # -- FlowStore -------------------------------------------------------------------------

    def start_flow_run(
        self,
        plan: FlowPlan,
        *,
        workflow_id: str,
        input: Any,
        max_attempts: int,
        connection: Any = None,
        deadline: float | None = None,
    ) -> RunStart:
        validate_workflow_id(workflow_id)
        if deadline is not None:
            check_deadline(f"run {workflow_id!r}", deadline)
        encoded = dumps(
            input, what="input", limit=self.max_payload_bytes, owner=f"run {workflow_id!r}"
        )
        arguments: dict[str, Any] = {
            "workflow_id": workflow_id,
            "encoded_input": encoded,
            "input": loads(encoded),
            "max_attempts": max_attempts,
            "definition": dumps(plan.definition, what="definition"),
            "deadline": None if deadline is None else float(deadline),
        }
        return self._settling(connection, lambda settler: settler.start(plan, **arguments))

    def _settling(self, connection: Any, work: Callable[[FlowSettler], _T]) -> _T:
        """Run `work` with a settler in a transaction of its own, or in the caller's
        (`connection`), then wake the queues that gained tasks (at commit)."""
        if connection is None:
            with self._tx() as own:
                settler = self._settler(own)
                done = work(settler)
                settler.announce_new_tasks([])
                return done
        if not isinstance(connection, Connection):
            raise TypeError(
                f"connection must be an SQLAlchemy Connection, not {type(connection).__name__}"
            )
        self._check_open()
        with self._translated():
            settler = self._settler(connection, own=False)
            done = work(settler)
            settler.announce_new_tasks([])
            return done

    def complete_tasks(
        self,
        completions: Sequence[TaskCompletion],
        plans: Mapping[str, FlowPlan],
        *,
        claim: SuccessorClaim | None = None,
    ) -> list[int]:
        if not completions:
            return []
        for completion in completions:
            if completion.output is not None:
                check_size(
                    completion.output,
                    what="output",
                    limit=self.max_payload_bytes,
                    owner=f"job {completion.ref.id}",
                )
        claimed: list[Job] = []
        with self._tx() as connection:
            settler = self._settler(connection)
            counted = settler.complete(completions, plans)
            if claim is not None:
                claimed = settler.claim_successors(claim)
            settler.announce_new_tasks(claimed)
        if claim is not None:  # only once committed: a rolled-back claim holds nothing
            claim.claimed = claimed
        return counted

    def get_step_states(self, workflow_id: str) -> dict[str, StepState]:
        params = {"p_workflow_id": workflow_id}
        children: dict[str, str] = {}
        with self._read() as connection:
            rows = connection.execute(self._f.step_states, params).all()
            live: dict[str, int] = {}
            if rows:
                for name, attempt in connection.execute(self._f.live_attempts, params).all():
                    live[name] = attempt
            if any(row[10] == SUBFLOW for row in rows):
                children = self._children(connection, workflow_id, rows)
        return {
            row[0]: StepState(
                step=row[0],
                state=StepStatus(row[1]),
                attempts=max(row[2], live.get(row[0]) or 0),
                output=row[3],
                started_at=row[4],
                completed_at=row[5],
                tasks_total=row[6],
                tasks_done=row[7],
                skip_reason=row[8],
                error=row[9],
                kind=row[10],
                child_id=children.get(row[0]),
            )
            for row in rows
        }

    def _children(
        self, connection: Connection, workflow_id: str, rows: Sequence[Any]
    ) -> dict[str, str]:
        """Each sub-flow step's latest child run; a step a restart copied keeps the child of
        the run it was copied from (found along `restart_of`)."""
        children: dict[str, str] = {}
        source: str | None = workflow_id
        copied = {row[0] for row in rows if row[10] == SUBFLOW and row[1] in _SETTLED}
        seen: set[str] = set()
        while source is not None and source not in seen:
            seen.add(source)
            found: dict[str, str] = {}
            for name, child_id, *_ in connection.execute(
                self._f.children, {"p_workflow_id": source}
            ).all():
                found[name] = child_id  # oldest first: the latest child wins
            for name, child_id in found.items():
                if source == workflow_id or (name in copied and name not in children):
                    children[name] = child_id
            if not copied - children.keys():
                break
            source = connection.execute(
                self._f.restart_of, {"p_workflow_id": source}
            ).scalar_one_or_none()
        return children

    def fail_run(self, workflow_id: str, error: dict[str, Any]) -> bool:
        dumps(error, what="error", limit=self.max_payload_bytes, owner=f"run {workflow_id!r}")
        with self._tx() as connection:
            return self._settler(connection).fail_run(workflow_id, error)

    def cancel_run(self, workflow_id: str) -> RunRecord | None:
        with self._tx() as connection:
            self._settler(connection).cancel_run(workflow_id)
        return self.get_run(workflow_id)

    def signal_run(
        self,
        plans: Mapping[str, FlowPlan],
        workflow_id: str,
        step: str,
        payload: Any,
        *,
        connection: Any = None,
    ) -> bool:
        encoded = dumps(
            payload,
            what="payload",
            limit=self.max_payload_bytes,
            owner=f"signal {step!r} of run {workflow_id!r}",
        )
        return self._settling(
            connection, lambda settler: settler.signal(plans, workflow_id, step, encoded)
        )

    def resume_run(self, plan: FlowPlan, workflow_id: str) -> RunRecord:
        with self._tx() as connection:
            settler = self._settler(connection)
            settler.resume(plan, workflow_id)
            settler.announce_new_tasks([])
        run = self.get_run(workflow_id)
        assert run is not None  # runs are only deleted finished (prune)
        return run

    def restart_run(
        self,
        plan: FlowPlan,
        workflow_id: str,
        *,
        new_id: str,
        rerun: Collection[str],
        input: Any,
    ) -> RunStart:
        validate_workflow_id(new_id)
        encoded = dumps(input, what="input", limit=self.max_payload_bytes, owner=f"run {new_id!r}")
        arguments: dict[str, Any] = {
            "new_id": new_id,
            "rerun": frozenset(rerun),
            "encoded_input": encoded,
            "input": loads(encoded),
            "definition": dumps(plan.definition, what="definition"),
        }
        with self._tx() as connection:
            settler = self._settler(connection)
            started = settler.restart(plan, workflow_id, **arguments)
            settler.announce_new_tasks([])
        return started

    def expire_runs(self, limit: int = 100) -> list[str]:
        """One transaction per run: each locks only its run and that run's descendants
        (never a parent after a child, which a parent's own sweep could deadlock with)."""
        if limit <= 0:
            return []
        with self._read() as connection:
            due = list(connection.execute(self._f.expired_runs, {"p_limit": limit}).scalars())
        expired: list[str] = []
        for workflow_id in due:
            with self._tx() as connection:
                if self._settler(connection).expire(workflow_id):
                    expired.append(str(workflow_id))
        return expired

    def wait_for_run(self, workflow_id: str, timeout: float | None) -> RunRecord | None:
        """Re-read the run until it finished or `timeout` passed (SQLite: no notifications
        cross processes; PostgreSQL overrides this with LISTEN)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_MIN
        while True:
            run = self.get_run(workflow_id)
            if run is None or run.state is not RunState.RUNNING:
                return run
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return run
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, _POLL_MAX)

    def running_flow_runs(self, flow: str, fingerprint: str, limit: int = 100) -> list[str]:
        params = {"p_flow": flow, "p_fingerprint": fingerprint, "p_limit": max(limit, 0)}
        with self._read() as connection:
            return [str(w) for w in connection.execute(self._f.running_flow_runs, params).scalars()]

    def running_flows(self) -> list[tuple[str, str, int]]:
        with self._read() as connection:
            rows = connection.execute(self._f.running_flows).all()
        return [(str(name), str(fingerprint), int(count)) for name, fingerprint, count in rows]
