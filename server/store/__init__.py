"""The store: every SQL statement of tagrun lives in this package."""

from __future__ import annotations

from tagrun.server.job_states import FINAL_STATES, STATES
from tagrun.server.store._base import (
    CANCEL_CHANNEL,
    CAPPED_CHANNEL,
    DATABASE_ERRORS,
    DATABASE_STARTING,
    DATABASE_UNAVAILABLE,
    DONE_CHANNEL,
    FLEET_CHANNEL,
    JOBS_CHANNEL,
    create_pool,
)
from tagrun.server.store.accounts import Accounts, Principal, hash_token
from tagrun.server.store.agents import Agents
from tagrun.server.store.autoscale import Autoscaling
from tagrun.server.store.broadcasts import Broadcasts
from tagrun.server.store.budgets import Budgets
from tagrun.server.store.completions import Outcome
from tagrun.server.store.history import History
from tagrun.server.store.jobs import Jobs, NewJob
from tagrun.server.store.leases import ClaimedRow, ClaimFilter, Leases
from tagrun.server.store.migrate import migrate
from tagrun.server.store.schedules import Schedules
from tagrun.server.store.scripts import Scripts
from tagrun.server.store.secrets import Secrets
from tagrun.server.store.settings import (
    AGENT_DOWNLOAD_URL,
    INLINE_CAP,
    MIN_AGENT_VERSION,
    RECOMMENDED_AGENT_VERSION,
    TOTAL_CAP,
    Settings,
)
from tagrun.server.store.ui import UiQueries


class Store(Accounts, Agents, Budgets, Scripts, Secrets, Settings, Jobs, Leases, Schedules,
            UiQueries, History, Autoscaling, Broadcasts):
    """One object over the pool; the mixins group statements by concept."""


__all__ = ["AGENT_DOWNLOAD_URL", "MIN_AGENT_VERSION", "RECOMMENDED_AGENT_VERSION",
           "CANCEL_CHANNEL", "CAPPED_CHANNEL", "DATABASE_ERRORS", "DATABASE_STARTING",
           "DATABASE_UNAVAILABLE", "DONE_CHANNEL", "FINAL_STATES", "FLEET_CHANNEL", "INLINE_CAP",
           "JOBS_CHANNEL", "STATES", "TOTAL_CAP", "ClaimFilter", "ClaimedRow", "NewJob",
           "Outcome", "Principal", "Store", "create_pool", "hash_token", "migrate"]
