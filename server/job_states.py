"""A job's states, named once: the store, the routes, the UI, the OpenAPI document and the
CLI all read them here (no database driver is imported, so the CLI stays quick)."""

from __future__ import annotations

STATES = ("queued", "running", "succeeded", "failed", "cancelled")  # the order users see
FINAL_STATES = STATES[2:]  # nothing changes a job in these but a user's retry
