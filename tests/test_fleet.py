"""API replicas and worker processes on one PostgreSQL: real processes, real stand-ins."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import make_photo
from tests.fleet import Fleet, Replica
from tests.helpers import read_sse, start_job, wait_for


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str):
    """A fleet of processes on the test's own schema; every process is stopped afterwards."""
    made = Fleet(tmp_path, postgres_url)
    try:
        yield made
    finally:
        made.stop()


def upload(replica: Replica, color: tuple[int, int, int]) -> str:
    answer = replica.http.post(
        "/upload-image", files={"image": ("me.png", make_photo(color), "image/png")}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["imageName"]


def test_a_job_made_on_one_replica_is_read_streamed_and_cancelled_on_another(
    fleet, standins, tmp_path
):
    """Replica A takes jobs, a worker process runs them, replica B reads, streams, shows the
    live preview of and cancels them."""
    server = standins("gpu1", previews=True)
    server.set_faults(step_delay=0.05)
    a = fleet.replica("a")
    b = fleet.replica("b")
    fleet.worker("w1", server.url)
    a.wait_up()
    b.wait_up()
    b.wait_workers({server.url})
    styles = {style["name"]: style for style in b.http.get("/styles").json()["styles"]}
    assert styles["avatar"]["liveServers"] == [server.url]

    name = upload(a, (200, 80, 40))
    streamed = start_job(a, name)
    events = read_sse(b, streamed, timeout=60)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "state" and kinds[-1] == "succeeded"
    assert "running" in kinds and "progress" in kinds
    done = b.http.get(f"/jobs/{streamed}").json()
    assert done["status"] == "succeeded" and len(done["avatars"]) == 1
    avatar = b.http.get(
        done["avatars"][0]["url"].replace(done["links"]["self"].split("/jobs")[0], "")
    )
    assert avatar.status_code == 200 and avatar.content[:8] == b"\x89PNG\r\n\x1a\n"

    server.set_faults(step_delay=0.5)
    cancelled = start_job(a, name)
    b.wait_job(cancelled, until=lambda record: record["status"] == "running")
    wait_for(lambda: b.http.get(f"/jobs/{cancelled}/preview").status_code == 200, timeout=10)
    preview = b.http.get(f"/jobs/{cancelled}/preview")
    assert preview.headers["content-type"].startswith("image/") and preview.content
    answer = b.http.post(f"/jobs/{cancelled}/cancel")
    assert answer.status_code in (200, 202), answer.text
    record = a.wait_job(cancelled, timeout=20)
    assert record["status"] == "cancelled"
    assert record["avatars"] == []
    wait_for(lambda: server.interrupts, timeout=10)
    assert b.http.get(f"/jobs/{cancelled}").json()["status"] == "cancelled"


def test_kill_9_of_a_replica_and_a_worker_loses_no_job_and_runs_none_twice(
    fleet, standins, tmp_path
):
    """A killed mid-job, a worker killed mid-job, one joining later: every job, one avatar."""
    first, second, third = standins("gpu1"), standins("gpu2"), standins("gpu3")
    for server in (first, second, third):
        server.set_faults(step_delay=0.05)
    a = fleet.replica("a")
    b = fleet.replica("b")
    doomed = fleet.worker("w1", first.url)
    fleet.worker("w2", second.url)
    a.wait_up()
    b.wait_up()
    b.wait_workers({first.url, second.url})

    name = upload(a, (30, 160, 90))
    jobs = [start_job(a, name) for _ in range(8)]
    a.process.kill()
    wait_for(lambda: first.prompts, timeout=20)
    doomed.kill()
    fleet.worker("w3", third.url)
    b.wait_workers({third.url})

    records = [b.wait_job(job_id, timeout=60) for job_id in jobs]
    assert [record["status"] for record in records] == ["succeeded"] * len(jobs)
    assert all(len(record["avatars"]) == 1 for record in records)
    saved = sorted(p.name for p in (tmp_path / "generated_avatar").iterdir() if p.suffix == ".png")
    assert len(saved) == len(jobs)
    assert {name.split("_", 1)[0] for name in saved} == set(jobs)
    assert third.prompts, "the worker that joined later took jobs"
    report = b.http.get("/readyz").json()
    assert {w["server"] for w in report["workers"]} == {second.url, third.url}


def test_a_worker_stopped_with_sigterm_gives_its_jobs_back_at_once(fleet, standins, tmp_path):
    """SIGTERM: the worker withdraws its prompts and requeues its jobs (long before its lease
    would pass); another worker finishes them, one avatar each."""
    leaving, staying = standins("gpu1"), standins("gpu2")
    leaving.set_faults(step_delay=0.5)
    a = fleet.replica("a", WORKER_LEASE="300")
    worker = fleet.worker("w1", leaving.url, WORKER_LEASE="300")
    a.wait_up()
    a.wait_workers({leaving.url})
    name = upload(a, (90, 40, 160))
    jobs = [start_job(a, name) for _ in range(2)]
    wait_for(lambda: len(leaving.prompts) == 2, timeout=20)  # one running, one waiting there
    assert worker.terminate() == 0
    assert "given back to the queue" in worker.output()
    wait_for(lambda: leaving.interrupts, timeout=10)
    fleet.worker("w2", staying.url, WORKER_LEASE="300")
    records = [a.wait_job(job_id, timeout=30) for job_id in jobs]
    assert [record["status"] for record in records] == ["succeeded", "succeeded"]
    assert all(len(record["avatars"]) == 1 for record in records)
    saved = [p for p in (tmp_path / "generated_avatar").iterdir() if p.suffix == ".png"]
    assert len(saved) == 2
    report = a.http.get("/readyz").json()
    assert {w["server"] for w in report["workers"]} == {staying.url}, report


def test_a_replica_without_workers_is_not_ready_and_says_why(fleet):
    """/readyz: the database answers, no live worker: 503 with the reason; jobs are refused."""
    a = fleet.replica("a", LOCAL_WORKERS="false")
    a.wait_up()
    answer = a.http.get("/readyz")
    assert answer.status_code == 503
    report = answer.json()
    assert report == {
        "ready": False,
        "database": {"ok": True, "engine": "postgresql"},
        "workers": [],
        "servers": {},
        "reason": "no live worker can take jobs (none registered, or their ComfyUI servers "
        "are unreachable)",
    }


def test_a_process_that_loses_the_database_stops_taking_work_and_says_why(
    fleet, standins, postgres_url, tmp_path
):
    """Replica A reaches PostgreSQL through a proxy that is cut mid-job: its /readyz says why
    (503), a worker elsewhere takes its job over once the lease passes and saves one avatar;
    restored, A is ready again."""
    from urllib.parse import urlsplit, urlunsplit

    from tests.tcp_proxy import TcpProxy

    parts = urlsplit(postgres_url)
    proxy = TcpProxy((parts.hostname, parts.port or 5432)).start()
    try:
        via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        cut_off, other = standins("gpu1"), standins("gpu2")
        cut_off.set_faults(step_delay=0.3)
        a = fleet.replica(
            "a", LOCAL_WORKERS="true", COMFYUI_URL=cut_off.url, DATABASE_URL=via_proxy
        )
        b = fleet.replica("b")
        a.wait_up()
        b.wait_up()
        b.wait_workers({cut_off.url})
        job_id = start_job(a, upload(a, (120, 120, 30)))
        a.wait_job(job_id, until=lambda record: record["status"] == "running")
        fleet.worker("w2", other.url)
        b.wait_workers({other.url})

        proxy.cut()
        wait_for(lambda: a.http.get("/readyz").status_code == 503, timeout=20)
        report = a.http.get("/readyz").json()
        assert report["ready"] is False
        assert report["database"]["ok"] is False
        assert report["reason"].startswith("the database does not answer")
        record = b.wait_job(job_id, timeout=40)
        assert record["status"] == "succeeded" and len(record["avatars"]) == 1
        wait_for(lambda: "lost the database" in a.process.output(), timeout=30)

        proxy.restore()
        wait_for(lambda: a.http.get("/readyz").status_code == 200, timeout=30)
        saved = [p for p in (tmp_path / "generated_avatar").iterdir() if p.suffix == ".png"]
        assert len(saved) == 1
    finally:
        fleet.stop()  # while the proxy still forwards: the processes leave cleanly
        proxy.stop()


def test_a_worker_process_refuses_the_sqlite_default(tmp_path):
    """Without a shared DATABASE_URL the worker command exits 2 and says what it needs."""
    import os
    import subprocess
    import sys

    from tests.fleet import REPO_ROOT

    env = {**os.environ, "DATABASE_URL": "", "INSTANCE_PATH": str(tmp_path / "instance")}
    done = subprocess.run(
        [sys.executable, "-m", "avatar_service.worker", "--comfyui", "http://127.0.0.1:9"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "a worker process needs a shared DATABASE_URL (postgresql://...)" in done.stderr
    assert not (tmp_path / "instance").exists()


def test_a_worker_restarted_next_to_its_server_follows_the_killed_workers_prompt(
    fleet, standins, tmp_path
):
    """kill -9 of a worker mid-prompt, a new worker for the same server: once the lease
    passes it takes the job over and follows the same prompt by its id (ComfyUI's /history),
    so the server ran one prompt and the job has one avatar."""
    server = standins("gpu1")
    server.set_faults(step_delay=0.1)
    a = fleet.replica("a", WORKER_LEASE="6")
    doomed = fleet.worker("w1", server.url, WORKER_LEASE="6")
    a.wait_up()
    a.wait_workers({server.url})
    job_id = start_job(a, upload(a, (10, 90, 200)))
    a.wait_job(job_id, until=lambda record: record["status"] == "running")
    doomed.kill()
    fleet.worker("w2", server.url, WORKER_LEASE="6")
    record = a.wait_job(job_id, timeout=40)
    assert record["status"] == "succeeded" and len(record["avatars"]) == 1
    assert len(server.prompts) == 1
    assert "following prompt" in (tmp_path / "w2.log").read_text(encoding="utf-8")


def test_a_prompt_that_succeeded_after_its_worker_died_is_not_run_again(fleet, standins):
    """kill -9 of a worker whose server then finishes the prompt: the process that takes the
    job over reads the prompt's success in that server's /history and fetches its images; the
    other server never runs it."""
    orphaned, other = standins("gpu1"), standins("gpu2")
    orphaned.set_faults(step_delay=0.02)
    a = fleet.replica("a")
    doomed = fleet.worker("w1", orphaned.url)
    a.wait_up()
    a.wait_workers({orphaned.url})
    job_id = start_job(a, upload(a, (200, 200, 60)))
    wait_for(lambda: orphaned.prompts, timeout=20)
    doomed.kill()
    fleet.worker("w2", other.url)
    record = a.wait_job(job_id, timeout=40)
    assert record["status"] == "succeeded" and len(record["avatars"]) == 1
    assert other.prompts == []
    assert len(orphaned.prompts) == 1
    logs = "".join(process.output() for process in fleet.processes if process.name != "w1")
    assert "finished from the server's history" in logs


def test_a_worker_killed_while_its_deliveries_wait_loses_neither_the_end_nor_them(
    fleet, standins, postgres_url
):
    """The job's end and its deliveries are one transaction. With ``deliveries`` locked by the
    test, the worker's final transaction waits at its delivery insert; kill -9 of the worker
    then undoes the end with them (before, the end was already committed and both deliveries
    were lost). Once the lock is released another process takes the job over, ends it from the
    server's history with one avatar, and each receiver gets exactly one delivery."""
    import psycopg

    from tests.receivers import Receiver

    orphaned, other = standins("gpu1"), standins("gpu2")
    with Receiver() as hooks, Receiver() as uploads:
        fleet.env.update(WEBHOOK_URL=hooks.url("/hook"), UPLOAD_URL=uploads.url("/upload"))
        a = fleet.replica("a")
        doomed = fleet.worker("w1", orphaned.url)
        a.wait_up()
        a.wait_workers({orphaned.url})
        orphaned.set_faults(hang=True)  # the prompt waits until the lock is held
        job_id = start_job(a, upload(a, (60, 120, 180)))
        wait_for(lambda: orphaned.prompts, timeout=20)

        with psycopg.connect(postgres_url, autocommit=True) as watcher:
            lock = psycopg.connect(postgres_url)
            try:
                lock.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
                orphaned.set_faults(hang=False)

                def insert_waits() -> bool:
                    (waiting,) = watcher.execute(
                        "SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE %s"
                        " AND %s = ANY(pg_blocking_pids(pid))",
                        ("INSERT INTO deliveries%", lock.info.backend_pid),
                    ).fetchone()
                    return waiting > 0

                wait_for(insert_waits, timeout=30)
                doomed.kill()
            finally:
                lock.close()  # the lock goes with its transaction

        fleet.worker("w2", other.url)
        record = a.wait_job(job_id, timeout=40)
        assert record["status"] == "succeeded" and len(record["avatars"]) == 1
        done = a.wait_job(
            job_id,
            timeout=30,
            until=lambda r: (
                [w["state"] for w in r["webhooks"]] == ["delivered"]
                and (r["avatars"][0]["upload"] or {}).get("state") == "delivered"
            ),
        )
        [hook] = hooks.received
        [posted] = uploads.received
    assert hook.json()["type"] == "job.succeeded"
    assert hook.json()["data"]["jobId"] == job_id
    assert hook.headers["webhook-id"] == done["webhooks"][0]["id"]
    fields, files = posted.multipart()
    assert fields["jobId"] == job_id
    assert files["file"][0] == done["avatars"][0]["fileName"]
    assert other.prompts == []
    assert len(orphaned.prompts) == 1


def test_a_worker_cut_off_for_less_than_its_lease_finishes_its_job(fleet, standins, postgres_url):
    """A worker whose database goes away mid-job for less than its lease follows the job's
    prompt again (by id) when the database is back, and ends it: one prompt, one avatar; the
    lease of a job nothing follows is never renewed (the job is not stranded)."""
    from urllib.parse import urlsplit, urlunsplit

    from tests.tcp_proxy import TcpProxy

    parts = urlsplit(postgres_url)
    proxy = TcpProxy((parts.hostname, parts.port or 5432)).start()
    try:
        via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        gpu = standins("gpu")
        gpu.set_faults(step_delay=0.05)  # about 3.5 s per job
        api = fleet.replica("api").wait_up()
        fleet.worker("w", gpu.url, DATABASE_URL=via_proxy, WORKER_LEASE="12")
        api.wait_workers({gpu.url})
        job_id = start_job(api, upload(api, (40, 90, 160)))
        api.wait_job(job_id, until=lambda record: record["status"] == "running")

        proxy.cut()
        time.sleep(5)  # the scenario: an outage of 5 s, well inside the 12 s lease
        proxy.restore()

        record = api.wait_job(job_id, timeout=40)
        assert record["status"] == "succeeded", record
        assert len(record["avatars"]) == 1
        assert len(gpu.prompts) == 1  # followed again by its id, never queued twice
    finally:
        fleet.stop()
        proxy.stop()
