"""Batches on a real Ray cluster: a head started here on 127.0.0.1 (2 CPUs, no dashboard),
reached as a client would reach a KubeRay head service (``ray://HOST:PORT``).

Every Ray process of the head runs in one process group of its own, stopped by group at
the end; drivers run in subprocesses so Ray's process-wide state never leaks into the
test process.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from tests.batch.conftest import (
    REPO,
    Models,
    _edit,
    _scale_rows,
    check_isolation,
    fault_jobs,
    job_specs,
    read_lines,
    write_jobs,
)

pytestmark = pytest.mark.long_file(64)

SARIF_SCHEMA = REPO / "tests" / "gate" / "data" / "sarif-schema-2.1.0.json"
START_SECONDS = 90
CLIENT_START_SECONDS = 300
DRIVER_SECONDS = CLIENT_START_SECONDS + 180


@dataclass(frozen=True)
class Head:
    address: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepting(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    temp = tempfile.mkdtemp(prefix="msray", dir="/tmp")  # short: Ray's socket paths
    env = {
        **os.environ,
        # Loopback only: without this Ray advertises the machine's network address.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        # The head starts a server process per client; on a machine the test suite keeps
        # busy it can take longer than the default 30 s to answer its first call, and
        # the client then fails with "Initialization failure from server". The drivers'
        # own limit (DRIVER_SECONDS) leaves room for a slow start plus the batch.
        "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": str(CLIENT_START_SECONDS),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    client_port = _free_port()
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--num-cpus=2",
        "--object-store-memory=200000000",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _accepting(client_port):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"Ray head did not start: {(Path(temp) / 'head.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        address = f"ray://127.0.0.1:{client_port}"
        _wait_until_clients_connect(address, env, deadline, head, Path(temp))
        yield Head(address, env)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(2)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        with_group_gone(head.pid)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_until_clients_connect(
    address: str, env: dict[str, str], deadline: float, head: subprocess.Popen, temp: Path
) -> None:
    """The client port accepts before the head can serve a client (on a loaded machine
    the first connections fail with "Initialization failure from server"): connect as the
    tests will until one succeeds."""
    probe = f"import ray; ray.init({address!r}, logging_level='ERROR'); ray.shutdown()"
    while True:
        try:
            done = subprocess.run(
                [sys.executable, "-c", probe], env=env, capture_output=True, timeout=60
            )
            if done.returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        if head.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"Ray head serves no client: {(temp / 'head.log').read_text()[-2000:]}")
        time.sleep(1.0)


def with_group_gone(pgid: int) -> None:
    """Kill what is left of the head's process group (workers Ray started)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _run(
    head: Head, *args: str | Path, cwd: Path, timeout: float = DRIVER_SECONDS
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *[str(a) for a in args]],
        env=head.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _batch(
    head: Head, jobs: Path, out: Path, *options: str | Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``modelseal batch JOBS -o OUT`` on the head's cluster, as a user runs it."""
    return _run(
        head,
        "-m",
        "scanner",
        "batch",
        jobs,
        "-o",
        out,
        "--address",
        head.address,
        *options,
        cwd=cwd,
    )


def _fleet(models: Models, count: int) -> list[dict[str, object]]:
    specs = job_specs(models)
    # Casts are the slow jobs on 2 cores; run them once each.
    cheap = [s for s in specs if "claims" not in s]
    jobs = [{"id": f"cast-{i}", **s} for i, s in enumerate(s for s in specs if "claims" in s)]
    while len(jobs) < count:
        spec = cheap[len(jobs) % len(cheap)]
        jobs.append({"id": f"job-{len(jobs):02d}", **spec})
    return jobs


@pytest.fixture(scope="module")
def fleet_run(
    ray_head: Head, models: Models, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    root = tmp_path_factory.mktemp("ray-fleet")
    mutable = root / "same.safetensors"  # the resume test changes it after this run
    shutil.copy(models.same, mutable)
    specs = [
        {**s, "deployed": str(mutable)} if s.get("deployed") == str(models.same) else s
        for s in _fleet(models, 54)
    ]
    jobs = write_jobs(root / "jobs.jsonl", specs)
    out, sarif = root / "results.jsonl", root / "results.sarif"
    done = _batch(ray_head, jobs, out, "--sarif", sarif, "--timeout", "120", cwd=root)
    return {
        "root": root,
        "specs": specs,
        "jobs": jobs,
        "out": out,
        "sarif": sarif,
        "done": done,
        "mutable": mutable,
    }


def _expected_codes(specs: list[dict[str, object]]) -> dict[str, int]:
    from tests.batch.conftest import reference_exit_code

    cache: dict[str, int] = {}
    out = {}
    for spec in specs:
        body = {k: v for k, v in spec.items() if k != "id"}
        key = json.dumps(body, sort_keys=True)
        if key not in cache:
            cache[key] = reference_exit_code(body)
        out[str(spec["id"])] = cache[key]
    return out


def test_fifty_jobs_on_ray_agree_with_the_single_commands(fleet_run: dict[str, object]) -> None:
    done = fleet_run["done"]
    assert isinstance(done, subprocess.CompletedProcess)
    specs = fleet_run["specs"]
    assert isinstance(specs, list) and len(specs) >= 50
    assert done.returncode == 2, done.stderr  # the truncated file cannot complete
    assert (
        f"batch: {len(specs)} jobs:" in done.stdout
        and f"{len(specs)} ran, 0 already done" in done.stdout
    )
    lines = read_lines(fleet_run["out"])  # type: ignore[arg-type]
    assert [x["id"] for x in lines] == [s["id"] for s in specs]
    expected = _expected_codes(specs)
    assert {x["id"]: x["exit_code"] for x in lines} == expected
    assert {x["verdict"] for x in lines} == {"pass", "fail", "error"}
    # The jobs ran in Ray workers, not in the driver.
    driver_host = socket.gethostname()
    workers = {x["worker"] for x in lines}
    assert len(workers) >= 2 and all(w.startswith(f"{driver_host}:") for w in workers)

    doc = json.loads(Path(fleet_run["sarif"]).read_text())  # type: ignore[arg-type]
    jsonschema.validate(doc, json.loads(SARIF_SCHEMA.read_text()), cls=jsonschema.Draft4Validator)
    assert len(doc["runs"][0]["invocations"]) == len(specs)
    assert sum(
        len([r for r in doc["runs"][0]["results"] if r["properties"]["job"] == x["id"]])
        for x in lines
    ) == sum((x["findings"] or {}).get("total", 0) for x in lines)


def test_resume_on_ray_from_a_partial_result_file(
    ray_head: Head, fleet_run: dict[str, object], tmp_path: Path
) -> None:
    lines = read_lines(fleet_run["out"])  # type: ignore[arg-type]
    # A crashed run: 30 lines written, the 31st torn mid-write.
    seeded = tmp_path / "results.jsonl"
    seeded.write_text(
        "".join(json.dumps(x) + "\n" for x in lines[:30]) + json.dumps(lines[30])[:40]
    )
    # Since then one model changed on disk, in place.
    mutable = Path(fleet_run["mutable"])  # type: ignore[arg-type]
    _edit(mutable, mutable, _scale_rows)
    reads_mutable = {x["id"] for x in lines if x["inputs"]["deployed"] == str(mutable)}
    assert reads_mutable & {x["id"] for x in lines[:30]}
    skippable = [
        x["id"] for x in lines[:30] if x["exit_code"] != 2 and x["id"] not in reads_mutable
    ]

    done = _batch(ray_head, fleet_run["jobs"], seeded, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    ran = len(lines) - len(skippable)
    assert f"{ran} ran, {len(skippable)} already done" in done.stdout
    final = read_lines(seeded)
    assert [x["id"] for x in final] == [x["id"] for x in lines]
    before = {x["id"]: x for x in lines}
    for line in final:
        if line["id"] in skippable:
            assert line == before[line["id"]]  # kept as it was, not run again
        elif line["id"] in reads_mutable:
            assert before[line["id"]]["verdict"] == "pass" and line["verdict"] == "fail"
            assert line["digests"]["deployed"] != before[line["id"]]["digests"]["deployed"]
        else:
            assert line["exit_code"] == before[line["id"]]["exit_code"]
            assert line["finished"] >= before[line["id"]]["finished"]


ISOLATION_DRIVER = """
import json, sys
from pathlib import Path
from scanner.batch import RayEngine, load_jobs, run_batch

jobs_file, out, address = sys.argv[1:4]
engine = RayEngine(address, workers=2, runner="tests.batch.faults:run_task")
summary = run_batch(load_jobs(Path(jobs_file)), engine, Path(out), timeout=4)
print(json.dumps({"exit_code": summary.exit_code, "timed_out": summary.timed_out}))
"""


def test_hanging_and_crashing_jobs_on_ray_cost_only_themselves(
    ray_head: Head, models: Models, tmp_path: Path
) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", fault_jobs(models))
    out = tmp_path / "results.jsonl"
    done = _run(ray_head, "-c", ISOLATION_DRIVER, jobs, out, ray_head.address, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"exit_code": 2, "timed_out": 1}
    check_isolation({x["id"]: x for x in read_lines(out)}, 4, "Ray worker died")


def test_a_worker_no_node_can_host_stops_the_batch_instead_of_hanging(
    ray_head: Head, models: Models, tmp_path: Path
) -> None:
    """Workers reserving more CPUs than any node has can never start: the batch stops
    after --worker-start-timeout with exit 2 and says why, instead of waiting forever."""
    specs = [{"id": f"job-{i}", **s} for i, s in enumerate(job_specs(models)[:2])]
    jobs = write_jobs(tmp_path / "jobs.jsonl", specs)
    started = time.monotonic()
    done = _batch(
        ray_head,
        jobs,
        tmp_path / "results.jsonl",
        *("--cpus-per-job", "3", "--worker-start-timeout", "15"),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "no ray worker became ready in 15 s with 2 jobs waiting" in done.stderr
    assert time.monotonic() - started < DRIVER_SECONDS
