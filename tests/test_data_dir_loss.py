"""A data dir deleted under a running daemon (issue 12, finding 11).

SQLite keeps committing into an unlinked file without an error, so a daemon that did not
look would acknowledge events the next start cannot find. It notices within about a second:
``/readyz`` answers 503, a call that must store an event gets -32003, and it says so in a
log line; and it puts back a database holding only the last id, so ids never go backwards.
A second daemon may then start on the same path (the old lock went with the directory);
the first one's stop removes only the files it made itself.
"""

from __future__ import annotations

import shutil

from helpers.daemons import cli, wait_for

STORAGE_UNAVAILABLE = -32003


def test_a_deleted_data_dir_is_noticed_and_nothing_more_is_acknowledged(subprocess_daemon):
    daemon = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    assert daemon.get("/readyz").status_code == 200
    assert "result" in daemon.rpc("permission.demo")
    shutil.rmtree(daemon.data_dir)
    wait_for(lambda: daemon.get("/readyz").status_code == 503, timeout=5, message="readyz 503")
    body = daemon.get("/readyz").json()
    assert "was removed or replaced while the daemon was running" in body["event_log"]["failure"]
    refused = daemon.rpc("permission.demo")
    assert refused["error"]["code"] == STORAGE_UNAVAILABLE
    assert daemon.rpc("system.ping")["result"] == "pong"  # still up, answering what needs no storage
    daemon.process.terminate()
    assert daemon.process.wait(10) == 0
    assert "publishing is refused until the daemon is restarted" in daemon.process.stderr.read()


def test_ids_never_go_backwards_after_the_data_dir_is_deleted(subprocess_daemon):
    """The daemon that notices puts back a database holding only the last id it handed
    out, so a client resuming with an id it saw does not skip the next daemon's events."""
    first = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    for _ in range(3):
        first.rpc("permission.demo")
    last = first.rpc("system.status")["result"]["last_event_id"]
    shutil.rmtree(first.data_dir)
    wait_for(lambda: (first.data_dir / "daemon.db").exists(), timeout=5, message="the id floor left behind")
    first.process.terminate()
    assert first.process.wait(10) == 0
    second = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=first.data_dir)
    second.rpc("permission.demo")
    assert second.rpc("system.status")["result"]["last_event_id"] > last


def test_a_daemon_whose_data_dir_was_deleted_leaves_its_successor_alone(subprocess_daemon):
    first = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    shutil.rmtree(first.data_dir)
    second = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=first.data_dir)
    first.process.terminate()
    assert first.process.wait(10) == 0
    assert (second.data_dir / "daemon.json").exists() and (second.data_dir / "run" / "daemon.pid").exists()
    status = cli("daemon", "status", "--data-dir", str(second.data_dir))
    assert status.returncode == 0 and str(second.process.pid) in status.stdout
    assert second.rpc("system.ping")["result"] == "pong"
