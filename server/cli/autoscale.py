"""`tagrun autoscale`: what GET /api/autoscale answers, as tables (works with an autoscale
token in TAGRUN_TOKEN); and autoscale tokens, for `tagrun token ... --autoscale`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tagrun.server.cli.client import Client, fail
from tagrun.server.cli.durations import bounds, parse_duration
from tagrun.server.cli.output import (
    Column,
    Format,
    Output,
    ago,
    duration,
    emit,
    plain,
    print_table,
)
from tagrun.server.models import WorkspaceTokenIn


def _agents(row: dict[str, Any]) -> str:
    """"3 live, 2 busy, 1 paused": the states an autoscaler weighs, those it has."""
    counts = [(row[f"agents_{state}"], state) for state in ("live", "busy", "paused", "draining")]
    return ", ".join(f"{n} {state}" for n, state in counts if n) or "none"


def _slots(row: dict[str, Any]) -> str:
    return f"{row['slots_busy']} of {row['slots_live']} busy" if row["slots_live"] else "-"


def _queued(row: dict[str, Any]) -> str:
    later = row["queued"] - row["queued_due"]
    return f"{row['queued_due']} (+{later} later)" if later else str(row["queued_due"])


POOL_COLUMNS = [
    Column("queued_text", "Queued (due)"), Column("running", "Running"),
    Column("oldest_queued_s", "Oldest waiting", duration), Column("agents_text", "Agents"),
    Column("slots_text", "Slots"), Column("desired_agents", "Desired agents"),
]
GROUP_COLUMNS = [Column("group", "Group", width=None), Column("tags", "Tags"), *POOL_COLUMNS]
TAG_COLUMNS = [Column("tag", "Tag", width=None), *POOL_COLUMNS]


def _readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "queued_text": _queued(r), "agents_text": _agents(r), "slots_text": _slots(r)}
            for r in rows]


def show_autoscale(answer: dict[str, Any]) -> None:
    inputs = answer["inputs"]
    typer.echo("inputs: " + "  ".join(f"{k}={plain(v)}" for k, v in inputs.items()))
    typer.echo("\nGROUPS")
    print_table(_readable(answer["groups"]), GROUP_COLUMNS)
    typer.echo("\nTAGS")
    print_table(_readable(answer["tags"]), TAG_COLUMNS)


def autoscale(
    target_slots_per_job: Annotated[float | None, typer.Option(
        help="Slots wanted per due or running job (default 1).")] = None,
    max_queue_age_s: Annotated[float | None, typer.Option(
        help="When the oldest due job has waited longer (seconds), ask for one agent more.")]
    = None,
    slots_per_agent: Annotated[int | None, typer.Option(
        help="Slots of an agent that does not say (its AGENT_SLOTS; default 1).")] = None,
    group: Annotated[str | None, typer.Option(help="Only this agent group (and its tags).")]
    = None,
    tag: Annotated[str | None, typer.Option(help="Only this tag (and the groups serving it).")]
    = None,
    output: Output = Format.TABLE,
) -> None:
    """Per agent group and per tag: queued and running jobs, agents and their slots, and how
    many agents each should have (the formula: docs/autoscaling.md)."""
    answer = Client().get("/api/autoscale", target_slots_per_job=target_slots_per_job,
                          max_queue_age_s=max_queue_age_s, slots_per_agent=slots_per_agent,
                          group=group, tag=tag)
    emit(answer, output, show_autoscale)


def create_autoscale_token(label: str, expires_in: str | None) -> str:
    """A new autoscale token (it does not expire unless `expires_in` says)."""
    body: dict[str, Any] = {"kind": "autoscale", "label": label}
    if expires_in is not None:
        body["expires_in_s"] = parse_duration(expires_in, "--expires-in",
                                              bounds(WorkspaceTokenIn, "expires_in_s"))
    token: str = Client().post("/api/tokens", body)["token"]
    return token


AUTOSCALE_TOKEN_COLUMNS = [
    Column("id", "ID"), Column("label", "Label"), Column("created_at", "Created", ago),
    Column("expires_at", "Expires", ago), Column("revoked", "Revoked"),
]


def list_autoscale_tokens(output: Format) -> None:
    answer = Client().get("/api/tokens", kind="autoscale")
    emit(answer, output, lambda a: print_table(a["tokens"], AUTOSCALE_TOKEN_COLUMNS))


def revoke_autoscale_token(raw_id: str) -> None:
    if not (raw_id.isascii() and raw_id.isdigit()):
        fail(f"{raw_id!r} is not an autoscale token's id (a number, from token list --autoscale)")
    client = Client()
    known = client.get("/api/tokens", kind="autoscale")["tokens"]
    if not any(t["id"] == int(raw_id) for t in known):
        fail(f"no autoscale token with id {raw_id} (see tagrun token list --autoscale)")
    client.delete(f"/api/tokens/{int(raw_id)}")
    typer.echo(f"revoked autoscale token {raw_id}")
