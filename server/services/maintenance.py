"""The built-in maintenance schedules: what each is, and the job its fire queues.

`server/maintenance.py` runs those jobs (and the maintenance that is no job: lease expiry,
the claim table's vacuum); the scheduler seeds the schedules and the schedules' view
describes them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tagrun.server.store import NewJob

MAINTENANCE_TAG = "tagrun-maintenance"
MAINTENANCE_LANGUAGE = "maintenance"


@dataclass(frozen=True)
class Builtin:
    name: str
    cron: str
    task: str
    description: str


BUILTINS = (
    Builtin("tagrun.job-retention", "7 * * * *", "job_retention",
            "deletes finished jobs, their logs and schedule fires older than "
            "TAGRUN_JOB_RETENTION_DAYS"),
    Builtin("tagrun.idempotency-keys", "37 * * * *", "idempotency_keys",
            "forgets Idempotency-Keys older than 24 hours"),
    Builtin("tagrun.expired-agent-tokens", "23 3 * * *", "expired_agent_tokens",
            "deletes agent tokens that expired more than 7 days ago"),
    Builtin("tagrun.stale-agents", "43 3 * * *", "stale_agents",
            "deletes records of agents and workers not seen for 7 days, and their "
            "state history"),
)
DESCRIPTIONS = {b.task: b.description for b in BUILTINS}


def maintenance_job(task: str, concurrency_key: str) -> NewJob:
    """The job a built-in schedule's fire queues; one attempt: the next fire is the retry."""
    return NewJob(None, None, MAINTENANCE_LANGUAGE, task, {}, MAINTENANCE_TAG, 0, None, None, 1,
                  concurrency_key=concurrency_key, concurrency_limit=1)
