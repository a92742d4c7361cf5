"""Prometheus metrics, read as a scraper would."""

from __future__ import annotations

import re
import uuid

import httpx
from prometheus_client import generate_latest

from tagrun.server import metrics
from tests.support.processes import TagrunProcess, wait_until


def scrape(url: str, **headers: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers=headers).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_counters_move_and_queue_depth_matches_the_api(server: TagrunProcess,
                                                        api: httpx.Client) -> None:
    before = scrape(server.url)
    ids = api.post("/api/w/default/jobs/batch", json={"jobs": [
        {"language": "identity", "args": {"i": i}} for i in range(20)]}).json()["ids"]
    for job_id in ids:
        assert api.get(f"/api/w/default/jobs/{job_id}", params={"wait_s": 20}).json()[
            "status"] == "succeeded"
    orphan = f"m-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        api.post("/api/w/default/jobs", json={"language": "bash", "content": "x", "tag": orphan})

    def moved() -> dict[str, float] | None:
        after = scrape(server.url)
        done = 'tagrun_jobs_finished_total{status="succeeded"}'
        ok = after.get(done, 0) - before.get(done, 0) >= 20 and \
            after.get(f'tagrun_queue_depth{{tag="{orphan}"}}') == 3
        return after if ok else None
    after = wait_until(moved, 5, interval=0.3, message="metrics to move")
    assert after["tagrun_jobs_submitted_total"] - before.get("tagrun_jobs_submitted_total", 0) \
        >= 23
    assert after["tagrun_dispatch_latency_seconds_count"] >= 20
    assert after["tagrun_job_duration_seconds_count"] >= 20
    assert any(k.startswith('tagrun_http_request_duration_seconds_count{method="POST",'
                            'route="/api/w/{ws}/jobs/batch"') for k in after)
    # Queue wait: by tag for those that ran, and the age of the oldest waiting one.
    assert after['tagrun_queue_wait_seconds_count{tag="identity"}'] >= 20
    assert after[f'tagrun_queue_oldest_age_seconds{{tag="{orphan}"}}'] >= 0
    older = wait_until(lambda: (a := scrape(server.url)).get(
        f'tagrun_queue_oldest_age_seconds{{tag="{orphan}"}}', 0) >= 1.0 and a, 10,
        interval=0.3, message="the oldest queued job to age")
    assert 'tagrun_agent_slots{state="busy"}' in older
    assert 'tagrun_agent_slots{state="idle"}' in older
    tags = {t["tag"]: t for t in api.get("/api/workers").json()["tags"]}
    assert tags[orphan]["oldest_queued_s"] >= 1.0 and tags[orphan]["wait_p50_s"] is None
    assert tags["identity"]["wait_p95_s"] is not None  # the 20 that ran just now
    for job in api.get("/api/w/default/jobs", params={"tag": orphan}).json()["jobs"]:
        api.post(f"/api/w/default/jobs/{job['id']}/cancel")


def test_metrics_token_is_required_when_set(start_process, database_url: str) -> None:
    proc = start_process("server", database_url,
                         env={"TAGRUN_METRICS_TOKEN": "scrape-secret",
                              "TAGRUN_DB_POOL_SIZE": "5"}).wait_healthy()
    assert httpx.get(f"{proc.url}/metrics").status_code == 401
    wrong = httpx.get(f"{proc.url}/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    good = httpx.get(f"{proc.url}/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert good.status_code == 200 and "tagrun_db_pool_size" in good.text
    assert re.search(r"^tagrun_db_pool_max 5\.0$", good.text, re.MULTILINE)


def test_tag_labels_are_capped(server: TagrunProcess, api: httpx.Client) -> None:
    prefix = uuid.uuid4().hex[:6]
    jobs = [{"language": "bash", "content": "x", "tag": f"c{prefix}-{i}"} for i in range(130)]
    ids = api.post("/api/w/default/jobs/batch", json={"jobs": jobs}).json()["ids"]
    try:
        def queue_tags() -> list[str] | None:  # shared gauges are cached for a second
            text = httpx.get(f"{server.url}/metrics").text
            tags = re.findall(r'^tagrun_queue_depth\{tag="([^"]+)"\}', text, re.MULTILINE)
            return tags if "other" in tags else None
        tags = wait_until(queue_tags, 5, interval=0.3, message="the folded 'other' tag")
        assert len(tags) <= 101
    finally:
        for job_id in ids:
            api.post(f"/api/w/default/jobs/{job_id}/cancel")


def _wait_counts() -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in generate_latest(metrics.REGISTRY).decode().splitlines():
        if match := re.match(r'tagrun_queue_wait_seconds_count\{tag="([^"]*)"\} (\S+)', line):
            counts[match.group(1)] = float(match.group(2))
    return counts


def test_queue_wait_keeps_a_series_per_tag_up_to_the_limit_then_folds_into_other() -> None:
    """In this process, as a server's events record it: past MAX_TAG_LABELS tags, a new
    tag's waits go to "other", and a tag that has its own series keeps it."""
    before = _wait_counts()
    tags = [f"wait-{uuid.uuid4().hex[:8]}-{n}" for n in range(metrics.MAX_TAG_LABELS + 5)]
    for tag in tags:
        metrics.observe_queue_wait(tag, 0.01)
    after = _wait_counts()
    own = [tag for tag in after if tag != "other"]
    assert len(own) == metrics.MAX_TAG_LABELS  # never more series than the limit
    folded = [tag for tag in tags if tag not in after]
    assert len(folded) >= 5
    assert after.get("other", 0) - before.get("other", 0) == len(folded)
    kept = next(tag for tag in tags if tag in after)
    metrics.observe_queue_wait(kept, -1.0)  # a wait below zero counts as zero
    assert _wait_counts()[kept] == after[kept] + 1
