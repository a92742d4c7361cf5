"""The example Grafana dashboard (docs/grafana-dashboard.json) matches what /metrics exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import TagrunProcess

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"tagrun_[a-z_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that draws data (row panels only group the others)."""
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exposed_names(text: str) -> set[str]:
    """Metric names in a scrape: declared families, their typed suffixes, and sample names."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update({name, *(base + suffix for suffix in SUFFIXES.get(kind, ()))})
        elif line.startswith("# HELP "):
            names.add(line.split(" ", 3)[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_is_importable_json_whose_panels_all_query_prometheus() -> None:
    dashboard = load_dashboard()
    assert (dashboard["title"], dashboard["uid"], dashboard["schemaVersion"]) == (
        "tagrun", "tagrun", 39)
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = query_panels(dashboard)
    assert panels
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["title"] and "gridPos" in panel, panel
        assert "unit" in panel["fieldConfig"]["defaults"], panel["title"]
        assert panel["targets"] and all(t.get("expr") for t in panel["targets"]), panel["title"]


def test_every_metric_the_dashboard_queries_is_exposed(server: TagrunProcess,
                                                       api: httpx.Client) -> None:
    job_id = api.post("/api/w/default/jobs",
                      json={"language": "bash", "content": "echo hi"}).json()["id"]
    job = api.get(f"/api/w/default/jobs/{job_id}", params={"wait_s": 10}).json()
    assert job["status"] == "succeeded"
    scrape = httpx.get(f"{server.url}/metrics")
    assert scrape.status_code == 200
    exposed = exposed_names(scrape.text)
    used = {name for panel in query_panels(load_dashboard()) for target in panel["targets"]
            for name in METRIC_NAME.findall(target["expr"])}
    assert used, "the dashboard queries no tagrun metrics"
    assert sorted(used - exposed) == []
