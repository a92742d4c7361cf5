"""A job's states, named once: the store, the routes, the UI, the OpenAPI document and the
CLI all read them here (no database driver is imported, so the CLI stays quick). The final
states are the outcomes an agent or worker reports (shared/agent_wire.py)."""

from __future__ import annotations

from tagrun.shared.agent_wire import OUTCOMES

FINAL_STATES = OUTCOMES  # nothing changes a job in these but a user's retry
STATES = ("queued", "running", *FINAL_STATES)  # in the order users see
