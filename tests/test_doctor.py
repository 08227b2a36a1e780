"""`cheetahclaws daemon doctor` over the real CLI (issue 16 item 5): every check explained,
each problem with its fix, exit 0 only when all is well, --json for scripts; and never a
change to what it looks at, nor the token in its output."""

from __future__ import annotations

import json
import os
import signal

from helpers.daemons import cli, spawn_daemon, short_tmpdir


def doctor(*args: str) -> tuple[int, dict]:
    result = cli("daemon", "doctor", "--json", *args)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def by_check(report: dict) -> dict[str, dict]:
    return {finding["check"]: finding for finding in report["findings"]}


def test_a_healthy_running_daemon_passes_every_check():
    data_dir = short_tmpdir() / "data"
    process, _ = spawn_daemon(data_dir, "--listen", f"unix://{data_dir}/run/daemon.sock", "--listen", "tcp://127.0.0.1:0")
    try:
        code, report = doctor("--data-dir", str(data_dir))
        assert code == 0 and report["ok"] is True
        found = by_check(report)
        assert all(finding["status"] in ("ok", "info") for finding in report["findings"]), report
        for check in ("directory data", "directory run", "directory logs", "token file", "stale files",
                      "socket directory", "database", "free disk", "runtime demo", "daemon"):
            assert found[check]["status"] == "ok", found[check]
        assert found["daemon"]["detail"].startswith(f"pid {process.pid} answers at unix://") and " ms" in found["daemon"]["detail"]
        token = (data_dir / "daemon_token").read_text().strip()
        text = cli("daemon", "doctor", "--data-dir", str(data_dir))
        assert text.returncode == 0 and text.stdout.rstrip().endswith("all is well") and token not in text.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_a_group_writable_data_dir_is_a_problem_with_its_chmod():
    data_dir = short_tmpdir() / "data"
    process, _ = spawn_daemon(data_dir)
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    os.chmod(data_dir, 0o770)
    code, report = doctor("--data-dir", str(data_dir))
    finding = by_check(report)["directory data"]
    assert code == 1 and finding["status"] == "problem" and finding["fix"] == f"run: chmod go-w {data_dir}"
    assert oct(os.stat(data_dir).st_mode & 0o777) == "0o770"  # doctor changes nothing
    text = cli("daemon", "doctor", "--data-dir", str(data_dir)).stdout
    assert f"FAIL  directory data: {data_dir}: it is writable by group or others (mode 0770)" in text
    assert f"fix: run: chmod go-w {data_dir}" in text


def test_a_killed_daemon_leaves_stale_files_that_doctor_names():
    data_dir = short_tmpdir() / "data"
    process, info = spawn_daemon(data_dir)
    process.send_signal(signal.SIGKILL)
    process.wait(15)
    code, report = doctor("--data-dir", str(data_dir))
    stale = [f for f in report["findings"] if f["check"] == "stale files"]
    assert code == 1 and {f["status"] for f in stale} == {"warning"}
    named = " ".join(f["detail"] for f in stale)
    for path in (data_dir / "daemon.json", data_dir / "run" / "daemon.pid", data_dir / "run" / "daemon.sock"):
        assert str(path) in named
    assert f"pid {info['pid']} is not running" in named and all("rm " in f["fix"] for f in stale)
    assert by_check(report)["daemon"]["status"] == "info"  # not running is not itself a problem


def test_a_token_others_can_read_is_a_problem():
    data_dir = short_tmpdir() / "data"
    process, _ = spawn_daemon(data_dir, "--listen", "tcp://127.0.0.1:0")
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    token = data_dir / "daemon_token"
    os.chmod(token, 0o644)
    code, report = doctor("--data-dir", str(data_dir))
    finding = by_check(report)["token file"]
    assert code == 1 and finding["status"] == "problem" and finding["fix"] == f"run: chmod 600 {token}"
    assert token.read_text().strip() not in json.dumps(report)


def test_a_daemon_that_holds_the_lock_but_does_not_answer_is_a_problem():
    data_dir = short_tmpdir() / "data"
    process, _ = spawn_daemon(data_dir)
    try:
        process.send_signal(signal.SIGSTOP)  # alive, holding its lock, answering nothing
        code, report = doctor("--data-dir", str(data_dir))
        assert code == 1 and by_check(report)["daemon"]["status"] == "problem"
        assert "does not answer" in by_check(report)["daemon"]["detail"]
    finally:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0


def test_an_installed_service_is_reported(private_home):
    assert cli("daemon", "install-service", "--profile", "work", env={"PATH": str(short_tmpdir())}).returncode == 1
    code, report = doctor("--profile", "work")
    service = by_check(report)["service"]
    assert service["status"] in ("ok", "warning") and "cheetahclaws-daemon-work" in service["detail"]
    code, report = doctor("--profile", "other")
    assert by_check(report)["service"]["status"] == "info"
