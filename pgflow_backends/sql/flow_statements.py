"""The Core statements that store and settle distributed flow runs, one set per dialect.

Kept apart from `statements.py` (the job engine's) because they belong to one feature: the
step-state table, the insert-only task outputs, and the run counters of `FlowSettler`.
None of them relaxes its commit: a settle writes jobs, so it waits for the WAL flush.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    Delete,
    Insert,
    Integer,
    Select,
    String,
    Text,
    Update,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from pgflow.schema import jobs, runs, signals, step_states, task_outputs
from pgflow_backends.sql.expressions import as_json, db_now, db_now_plus, generic_plans, seconds
from pgflow_backends.sql.rows import CLAIM_COLUMNS, RUN_COLUMNS
from pgflow_backends.sql.statements import (
    FENCE,
    RELEASED_KEY,
    claimed_values,
    queue_open,
    registered_incarnation,
    run_insert,
    statements_for,
)

__all__ = ["FlowStatements", "flow_statements_for"]

#: Job states of a task that has not ended (the partial index pgflow_jobs_run_idx's set).
UNFINISHED = ("available", "scheduled", "executing", "retryable")
WAITING = ("available", "scheduled", "retryable")


#: 'running' written into the SQL text: the partial index on running runs then matches.
_RUNNING = literal_column("'running'", String())


def _p(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_)


def _many(name: str) -> Any:
    return bindparam(name, expanding=True)


def _json(name: str) -> as_json:
    return as_json(bindparam(name, type_=String()))


def _states(values: tuple[str, ...]) -> list[ColumnElement[str]]:
    """State names written into the SQL text, so a partial index's predicate matches."""
    return [literal_column(f"'{value}'", String()) for value in values]


class FlowStatements:
    """Every statement of the SQL FlowStore, for one dialect."""

    def __init__(self, dialect: str) -> None:
        insert_fn: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        now = db_now()
        run_id = _p("p_workflow_id", String())
        step = _p("p_step", String())
        this_step = (step_states.c.workflow_id == run_id, step_states.c.step == step)

        # -- starting a run --------------------------------------------------------------
        # No generic_plans() here: a start may join the caller's transaction, whose own
        # queries must keep their planning; only pgflow's settles (the run lock) switch it.
        self.insert_run: Insert = run_insert(
            insert_fn,
            {
                runs.c.remaining_steps: _p("p_steps", Integer()),
                # NULL seconds: no deadline (db_now_plus keeps NULL).
                runs.c.deadline_at: db_now_plus(seconds("p_deadline")),
                runs.c.parent_id: _p("p_parent_id", String()),
                runs.c.parent_step: _p("p_parent_step", String()),
                runs.c.parent_queue: _p("p_parent_queue", String()),
                runs.c.restart_of: _p("p_restart_of", String()),
            },
        )
        self.run: Select[Any] = select(*RUN_COLUMNS).where(runs.c.workflow_id == run_id)
        #: Executed with one parameter set per step (an executemany).
        self.insert_steps: Insert = insert_fn(step_states).values(
            workflow_id=run_id,
            step=step,
            step_index=_p("p_index", Integer()),
            kind=_p("p_kind", String()),
            state="pending",
            remaining_deps=_p("p_deps", Integer()),
            tasks_done=0,
            attempts=0,
        )

        # -- the run lock: every write about a run's steps holds it -----------------------
        #: FOR NO KEY UPDATE in workflow_id order: completions, failures and sweeps of one
        #: run serialize here, before any step or job row, so they never deadlock. It also
        #: switches the rest of the transaction to generic plans (see generic_plans).
        lock_columns = (
            runs.c.workflow_id,
            runs.c.state,
            runs.c.fingerprint,
            runs.c.remaining_steps,
            runs.c.max_attempts,
            runs.c.parent_id,
            runs.c.workflow,
        )
        self.lock_runs: Select[Any] = (
            select(*lock_columns)
            .where(runs.c.workflow_id.in_(_many("p_ids")), generic_plans())
            .order_by(runs.c.workflow_id)
            .with_for_update(key_share=True)
        )
        #: A run's running children (lock_runs' columns), locked by its failure sweep before
        #: its own steps (parents lock children, never the reverse).
        self.lock_children: Select[Any] = (
            select(*lock_columns)
            .where(runs.c.parent_id == run_id, runs.c.state == _RUNNING)
            .order_by(runs.c.workflow_id)
            .with_for_update(key_share=True)
        )
        child, parent = runs.alias("child"), runs.alias("parent")
        #: Where the relay task of ended child runs goes: their parent (read, not locked).
        self.parents_of: Select[Any] = (
            select(
                child.c.workflow_id,
                child.c.parent_id,
                child.c.parent_step,
                child.c.parent_queue,
                parent.c.workflow,
                parent.c.fingerprint,
                parent.c.state,
            )
            .join(parent, parent.c.workflow_id == child.c.parent_id)
            .where(child.c.workflow_id.in_(_many("p_ids")))
            .order_by(child.c.workflow_id)
        )
        self.restart_of: Select[Any] = select(runs.c.restart_of).where(runs.c.workflow_id == run_id)
        #: A run's child runs (the latest per sub-flow step is the step's child_id).
        self.children: Select[Any] = (
            select(runs.c.parent_step, runs.c.workflow_id, runs.c.state, runs.c.fingerprint)
            .where(runs.c.parent_id == run_id)
            .order_by(runs.c.started_at, runs.c.workflow_id)
        )
        self.run_input: Select[Any] = select(runs.c.input).where(runs.c.workflow_id == run_id)
        #: What failing a task's run needs of the job that ended it (never its args), and
        #: its step's state (a step settled already fails nothing).
        self.ended_task: Select[Any] = (
            select(
                jobs.c.workflow_id,
                jobs.c.step,
                jobs.c.state,
                jobs.c.attempt,
                cast(jobs.c.errors, Text),
                step_states.c.state,
            )
            .select_from(jobs)
            .outerjoin(
                step_states,
                (step_states.c.workflow_id == jobs.c.workflow_id)
                & (step_states.c.step == jobs.c.step),
            )
            .where(jobs.c.id == _p("p_id", Integer()), jobs.c.workflow_id.is_not(None))
        )
        #: The run a job is a task of (never changes, so read without a lock, before any).
        self.task_run_of: Select[Any] = select(jobs.c.workflow_id).where(
            jobs.c.id.in_(_many("p_job_ids")), jobs.c.workflow_id.is_not(None)
        )

        # -- completing tasks ------------------------------------------------------------
        self.complete_task: Update = (
            update(jobs)
            .where(
                FENCE,
                jobs.c.workflow_id == run_id,
                jobs.c.step == step,
                jobs.c.task_index == _p("p_task_index", Integer()),
            )
            .values(state="completed", completed_at=now, unique_key=RELEASED_KEY)
            .returning(jobs.c.attempt)
        )
        self.insert_output: Insert = (
            insert_fn(task_outputs)
            .values(
                workflow_id=run_id,
                step=step,
                task_index=_p("p_task_index", Integer()),
                output=_json("p_output"),
            )
            .on_conflict_do_nothing(
                index_elements=[
                    task_outputs.c.workflow_id,
                    task_outputs.c.step,
                    task_outputs.c.task_index,
                ]
            )
            .returning(task_outputs.c.task_index)
        )
        attempt = _p("p_attempt", Integer())
        highest_attempt = case(
            (step_states.c.attempts < attempt, attempt), else_=step_states.c.attempts
        )
        self.count_tasks: Update = (
            update(step_states)
            .where(*this_step, step_states.c.state == "started")
            .values(
                tasks_done=step_states.c.tasks_done + _p("p_count", Integer()),
                attempts=highest_attempt,
            )
            .returning(step_states.c.tasks_done, step_states.c.tasks_total)
        )
        #: A single-task step's only task: the step settles with it, counted once.
        self.settle_single: Update = (
            update(step_states)
            .where(*this_step, step_states.c.state == "started", step_states.c.tasks_done == 0)
            .values(
                tasks_done=1,
                attempts=highest_attempt,
                state=_p("p_state", String()),
                output=_json("p_output"),
                skip_reason=_p("p_reason", String()),
                completed_at=now,
            )
            .returning(step_states.c.step)
        )
        self.map_outputs: Select[Any] = (
            select(task_outputs.c.output)
            .where(task_outputs.c.workflow_id == run_id, task_outputs.c.step == step)
            .order_by(task_outputs.c.task_index)
        )

        # -- deciding and applying -------------------------------------------------------
        self.settled: Select[Any] = select(
            step_states.c.step, step_states.c.state, step_states.c.output
        ).where(step_states.c.workflow_id == run_id, step_states.c.step.in_(_many("p_steps")))
        self.start_step: Update = (
            update(step_states)
            .where(*this_step)
            .values(state="started", started_at=now, tasks_total=_p("p_total", Integer()))
        )
        self.complete_step: Update = (
            update(step_states)
            .where(*this_step)
            .values(
                state="completed",
                output=_json("p_output"),
                tasks_total=func.coalesce(step_states.c.tasks_total, 0),
                started_at=func.coalesce(step_states.c.started_at, now),
                completed_at=now,
            )
        )
        self.skip_step: Update = (
            update(step_states)
            .where(*this_step)
            .values(state="skipped", skip_reason=_p("p_reason", String()), completed_at=now)
        )
        #: Settled dependencies counted off a dependent; it is ready at 0.
        self.release: Update = (
            update(step_states)
            .where(*this_step)
            .values(remaining_deps=step_states.c.remaining_deps - _p("p_count", Integer()))
            .returning(step_states.c.remaining_deps)
        )
        self.count_off: Update = (
            update(runs)
            .where(runs.c.workflow_id == run_id)
            .values(remaining_steps=runs.c.remaining_steps - _p("p_count", Integer()))
            .returning(runs.c.remaining_steps)
        )
        self.complete_run: Update = (
            update(runs)
            .where(runs.c.workflow_id == run_id, runs.c.state == "running")
            .values(state="completed", output=_json("p_output"), finished_at=now)
        )

        # -- handlerless steps: signals, waits ---------------------------------------------
        #: The signals stored for some waits of some runs (filtered by pair in Python).
        self.signals_for: Select[Any] = select(
            signals.c.workflow_id, signals.c.step, signals.c.payload
        ).where(signals.c.workflow_id.in_(_many("p_ids")), signals.c.step.in_(_many("p_steps")))
        #: A wait keeps its first signal: a second insert for (run, step) returns nothing.
        self.insert_signal: Insert = (
            insert_fn(signals)
            .values(workflow_id=run_id, step=step, payload=_json("p_payload"), sent_at=now)
            .on_conflict_do_nothing(index_elements=[signals.c.workflow_id, signals.c.step])
            .returning(signals.c.step)
        )
        self.step_state: Select[Any] = select(step_states.c.state, step_states.c.skip_reason).where(
            *this_step
        )
        #: A waiting step completed by its signal, from `started` only (a timeout's or a
        #: relay's completion racing it then counts nothing).
        self.signal_step: Update = (
            update(step_states)
            .where(*this_step, step_states.c.state == "started", step_states.c.tasks_done == 0)
            .values(state="completed", output=_json("p_output"), tasks_done=1, completed_at=now)
            .returning(step_states.c.step)
        )
        step_jobs = (jobs.c.workflow_id == run_id, jobs.c.step == step)
        self.cancel_step_jobs: Update = (
            update(jobs)
            .where(*step_jobs, jobs.c.state.in_(_states(WAITING)))
            .values(state="cancelled", completed_at=now, unique_key=RELEASED_KEY)
        )
        self.executing_step_jobs: Select[Any] = (
            select(jobs.c.id, jobs.c.meta)
            .where(*step_jobs, jobs.c.state.in_(_states(("executing",))))
            .order_by(jobs.c.id)
        )

        # -- resume, restart, deadlines ----------------------------------------------------
        self.step_rows: Select[Any] = (
            select(step_states.c.step, step_states.c.state)
            .where(step_states.c.workflow_id == run_id)
            .order_by(step_states.c.step_index)
        )
        #: A step resumed from the frontier: pending again, counters and results cleared.
        self.reset_step: Update = (
            update(step_states)
            .where(*this_step)
            .values(
                state="pending",
                remaining_deps=_p("p_deps", Integer()),
                tasks_total=null(),
                tasks_done=0,
                attempts=0,
                output=null(),
                error=null(),
                skip_reason=null(),
                started_at=null(),
                completed_at=null(),
            )
        )
        self.resume_run: Update = (
            update(runs)
            .where(runs.c.workflow_id == run_id, runs.c.state != _RUNNING)
            .values(
                state="running",
                output=null(),
                error=null(),
                finished_at=null(),
                remaining_steps=_p("p_steps", Integer()),
            )
        )
        #: A resumed run's tasks left executing by its end: cancelled outright (fenced out).
        self.end_leftovers: Update = (
            update(jobs)
            .where(jobs.c.workflow_id == run_id, jobs.c.state.in_(_states(("executing",))))
            .values(state="cancelled", completed_at=now, unique_key=RELEASED_KEY)
        )
        #: The map elements already stored (a resumed map runs only the others).
        self.output_indexes: Select[Any] = select(
            task_outputs.c.step, task_outputs.c.task_index
        ).where(task_outputs.c.workflow_id == run_id, task_outputs.c.step.in_(_many("p_steps")))
        #: A resumed map: started with the elements already stored counted done.
        self.start_step_done: Update = (
            update(step_states)
            .where(*this_step)
            .values(
                state="started",
                started_at=now,
                tasks_total=_p("p_total", Integer()),
                tasks_done=_p("p_done", Integer()),
            )
        )
        old = step_states.alias("old")
        copied = (
            "step",
            "step_index",
            "kind",
            "state",
            "tasks_total",
            "tasks_done",
            "attempts",
            "output",
            "error",
            "skip_reason",
            "started_at",
            "completed_at",
        )
        #: A restart's kept steps, copied as they were from the old run.
        self.copy_steps: Insert = insert_fn(step_states).from_select(
            ["workflow_id", "remaining_deps", *copied],
            select(
                cast(run_id, String()),
                literal_column("0", Integer()),
                *(old.c[name] for name in copied),
            ).where(
                old.c.workflow_id == _p("p_old_id", String()),
                old.c.step.in_(_many("p_steps")),
            ),
        )
        #: Running runs past their deadline, oldest deadline first; the predicate is the
        #: partial index pgflow_runs_deadline_idx's.
        self.expired_runs: Select[Any] = (
            select(runs.c.workflow_id)
            .where(
                runs.c.state == _RUNNING,
                runs.c.deadline_at.is_not(None),
                runs.c.deadline_at <= now,
            )
            .order_by(runs.c.deadline_at, runs.c.workflow_id)
            .limit(_p("p_limit", Integer()))
        )

        # -- failing a run ---------------------------------------------------------------
        self.fail_step: Update = (
            update(step_states)
            .where(*this_step)
            .values(
                state="failed", error=_json("p_error"), attempts=highest_attempt, completed_at=now
            )
        )
        self.cancel_steps: Update = (
            update(step_states)
            .where(
                step_states.c.workflow_id == run_id,
                step_states.c.state.in_(["pending", "started"]),
            )
            .values(state="cancelled", completed_at=now)
        )
        run_jobs = (jobs.c.workflow_id == run_id,)
        self.cancel_jobs: Update = (
            update(jobs)
            .where(*run_jobs, jobs.c.state.in_(_states(WAITING)))
            .values(state="cancelled", completed_at=now, unique_key=RELEASED_KEY)
            .returning(jobs.c.id)
        )
        #: Flag one executing job cancel_requested (its new meta given); run as one batch
        #: (executemany) for all the executing tasks of a run being swept.
        self.flag_cancel_many: Update = (
            update(jobs)
            .where(jobs.c.id == _p("p_id", Integer()), jobs.c.state == "executing")
            .values(meta=_json("p_meta"))
        )
        self.executing_jobs: Select[Any] = (
            select(jobs.c.id, jobs.c.meta)
            .where(*run_jobs, jobs.c.state.in_(_states(("executing",))))
            .order_by(jobs.c.id)
        )
        self.fail_run: Update = (
            update(runs)
            .where(runs.c.workflow_id == run_id, runs.c.state == "running")
            .values(
                state=_p("p_state", String()),
                error=_json("p_error"),
                output=null(),
                finished_at=now,
            )
        )

        # -- reads -------------------------------------------------------------------------
        self.step_states: Select[Any] = (
            select(
                step_states.c.step,
                step_states.c.state,
                step_states.c.attempts,
                step_states.c.output,
                step_states.c.started_at,
                step_states.c.completed_at,
                step_states.c.tasks_total,
                step_states.c.tasks_done,
                step_states.c.skip_reason,
                step_states.c.error,
                step_states.c.kind,
            )
            .where(step_states.c.workflow_id == run_id)
            .order_by(step_states.c.step_index)
        )
        #: The attempts of tasks still running, per step (they count in StepState.attempts).
        self.live_attempts: Select[Any] = (
            select(jobs.c.step, func.max(jobs.c.attempt))
            .where(*run_jobs, jobs.c.state.in_(_states(UNFINISHED)))
            .group_by(jobs.c.step)
        )
        self.running_flows: Select[Any] = (
            select(runs.c.workflow, runs.c.fingerprint, func.count())
            .where(runs.c.state == _RUNNING, runs.c.remaining_steps.is_not(None))
            .group_by(runs.c.workflow, runs.c.fingerprint)
            .order_by(runs.c.workflow, runs.c.fingerprint)
        )
        #: A successor claim: the task jobs this transaction made available, claimed for the
        #: instance that completed their predecessors (fenced by its incarnation).
        self.claim_ids: Update = (
            update(jobs)
            .where(
                registered_incarnation(),
                jobs.c.id.in_(_many("p_ids")),
                jobs.c.state.in_(_states(("available",))),
                queue_open(_p("p_queue", String())),
            )
            .values(**claimed_values())
            .returning(*CLAIM_COLUMNS)
        )
        #: One flow definition's running runs, oldest first (the unserved-flow sweep).
        self.running_flow_runs: Select[Any] = (
            select(runs.c.workflow_id)
            .where(
                runs.c.state == _RUNNING,
                runs.c.remaining_steps.is_not(None),
                runs.c.workflow == _p("p_flow", String()),
                runs.c.fingerprint == _p("p_fingerprint", String()),
            )
            .order_by(runs.c.started_at, runs.c.workflow_id)
            .limit(_p("p_limit", Integer()))
        )
        self.finished_run: Select[Any] = select(runs.c.state).where(runs.c.workflow_id == run_id)

        # -- rescue: the runs of the tasks a rescue may end, found before it locks jobs ----
        job_sql = statements_for(dialect)
        task_runs = select(jobs.c.workflow_id).distinct()
        orphaned, held = job_sql.orphaned.whereclause, job_sql.held_by.whereclause
        assert orphaned is not None and held is not None  # both statements have a WHERE
        self.orphaned_runs: Select[Any] = task_runs.where(orphaned, jobs.c.workflow_id.is_not(None))
        self.held_runs: Select[Any] = task_runs.where(held, jobs.c.workflow_id.is_not(None))

        # -- pruning -----------------------------------------------------------------------
        self.delete_step_states: Delete = delete(step_states).where(
            step_states.c.workflow_id.in_(_many("p_ids"))
        )
        self.delete_task_outputs: Delete = delete(task_outputs).where(
            task_outputs.c.workflow_id.in_(_many("p_ids"))
        )
        self.delete_signals: Delete = delete(signals).where(
            signals.c.workflow_id.in_(_many("p_ids"))
        )


@functools.cache
def flow_statements_for(dialect: str) -> FlowStatements:
    """The flow statements for `dialect` ("postgresql" or "sqlite"), built on first use."""
    return FlowStatements(dialect)
