"""Worktree isolation (issue 15, item 4), over the wire with real daemons and real git.

``session.create`` with ``isolation: "worktree"`` gives the session a git worktree and a
branch of its own under the data dir; the runtime runs there; two sessions on one
repository never write into each other's tree; close removes the worktree (kept when it
holds changes, unless asked) and keeps the branch (unless asked); a daemon restart keeps
both. A non-git cwd, a repository with no commit or with uncommitted changes, and git
missing are refused with their own codes, leaving nothing behind.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from cc_daemon.client import GitMissing, NotAGitRepository, WorktreeUnavailable
from helpers.daemons import cli
from helpers.frontend import Watcher, client_of, wait_state


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


def repository(root: Path) -> Path:
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "sub").mkdir()
    (root / "sub" / "README").write_text("hello\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


def branches(repo: Path) -> list[str]:
    return git(repo, "branch", "--format=%(refname:short)").split()


def write_approved(client, session_id: str, name: str, text: str) -> None:
    """A demo turn that writes ``name`` in the session's cwd, approved by its originator."""
    watcher = Watcher(client, session_id, since=0)
    turn = client.call("session.send", session_id=session_id, text=f"write {name} {text}")["turn_id"]
    request = watcher.wait("permission_request", turn_id=turn)["data"]["request_id"]
    client.call("permission.answer", request_id=request, result={"approve": True})
    assert watcher.wait("turn_done", turn_id=turn)["data"]["status"] == "completed"
    watcher.close()


def test_two_sessions_on_one_repository_work_in_trees_and_branches_of_their_own(tcp_daemon, tmp_path):
    repo = repository(tmp_path / "repo")
    client = client_of(tcp_daemon, "repl")
    first, second = (client.call("session.create", runtime="demo", cwd=str(repo), isolation="worktree")
                     for _ in range(2))
    for session in (first, second):
        worktree = session["worktree"]
        assert Path(worktree["path"]) == tcp_daemon.data_dir / "worktrees" / session["session_id"]
        assert worktree["branch"] == f"cc-daemon/{session['session_id']}" and worktree["repo"] == str(repo)
        assert session["cwd"] == worktree["path"] == worktree["cwd"]
        assert (Path(worktree["path"]) / "sub" / "README").read_text() == "hello\n"
    assert sorted(branches(repo)) == sorted(["main", first["worktree"]["branch"], second["worktree"]["branch"]])

    write_approved(client, first["session_id"], "note.txt", "from the first")
    write_approved(client, second["session_id"], "note.txt", "from the second")
    assert (Path(first["cwd"]) / "note.txt").read_text() == "from the first\n"
    assert (Path(second["cwd"]) / "note.txt").read_text() == "from the second\n"
    assert not (repo / "note.txt").exists()

    # The first holds a change: closing it keeps the worktree (and says how to remove it).
    closed = client.call("session.close", session_id=first["session_id"])
    kept = closed["worktree_released"]
    assert kept["removed"] is False and "untracked" in kept["reason"] and Path(first["cwd"]).exists()
    # Asked to, a close discards the change and deletes the branch as well.
    closed = client.call("session.close", session_id=second["session_id"], discard_changes=True, delete_branch=True)
    assert closed["worktree_released"] == {"path": second["cwd"], "branch": second["worktree"]["branch"],
                                           "removed": True, "branch_deleted": True, "reason": None}
    assert not Path(second["cwd"]).exists() and second["worktree"]["branch"] not in branches(repo)
    assert first["worktree"]["branch"] in branches(repo)
    history = client.call("session.history", session_id=second["session_id"])["events"]
    assert [e["data"]["removed"] for e in history if e["type"] == "worktree_released"] == [True]


def test_a_clean_worktree_is_removed_at_close_and_its_branch_kept_from_a_subdirectory(tcp_daemon, tmp_path):
    repo = repository(tmp_path / "repo")
    client = client_of(tcp_daemon, "repl")
    session = client.call("session.create", runtime="demo", cwd=str(repo / "sub"), isolation="worktree")
    assert session["cwd"] == str(Path(session["worktree"]["path"]) / "sub")  # the same place in its tree
    wait_state(client, session["session_id"], "idle")
    released = client.call("session.close", session_id=session["session_id"])["worktree_released"]
    assert released["removed"] is True and released["branch_deleted"] is False
    assert not Path(session["worktree"]["path"]).exists() and session["worktree"]["branch"] in branches(repo)
    assert "cc-daemon" not in git(repo, "worktree", "list")


def test_a_worktree_session_resumes_in_its_worktree_after_a_restart(subprocess_daemon, tmp_path):
    repo = repository(tmp_path / "repo")
    first = subprocess_daemon("--listen", "tcp://127.0.0.1:0")
    client = client_of(first, "repl")
    session = client.call("session.create", runtime="demo", cwd=str(repo), isolation="worktree")
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(10) == 0
    assert Path(session["cwd"]).is_dir()  # a daemon stop is no close: the worktree stays

    second = subprocess_daemon("--listen", "tcp://127.0.0.1:0", data_dir=first.data_dir)
    client = client_of(second, "repl")
    resumed = wait_state(client, session["session_id"], "idle")
    assert resumed["worktree"] == session["worktree"] and resumed["cwd"] == session["cwd"]
    write_approved(client, session["session_id"], "after.txt", "resumed")
    assert (Path(session["cwd"]) / "after.txt").exists() and not (repo / "after.txt").exists()


def test_what_cannot_be_branched_is_refused_and_leaves_nothing_behind(tcp_daemon, tmp_path):
    client = client_of(tcp_daemon, "repl")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotAGitRepository, match="not in a git work tree") as caught:
        client.call("session.create", runtime="demo", cwd=str(plain), isolation="worktree")
    assert caught.value.data["reason"] == "not_a_repository" and "not a git repository" in caught.value.data["git"]

    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(WorktreeUnavailable, match="no commit") as caught:
        client.call("session.create", runtime="demo", cwd=str(empty), isolation="worktree")
    assert caught.value.data["reason"] == "no_commit"

    repo = repository(tmp_path / "repo")
    (repo / "sub" / "README").write_text("changed\n")
    (repo / "untracked.txt").write_text("not in the way\n")
    with pytest.raises(WorktreeUnavailable, match="commit or stash") as caught:
        client.call("session.create", runtime="demo", cwd=str(repo), isolation="worktree")
    assert caught.value.data["reason"] == "uncommitted_changes" and caught.value.data["changed"] == ["sub/README"]

    assert client.call("session.list")["sessions"] == [] and branches(repo) == ["main"]
    assert not list((tcp_daemon.data_dir / "worktrees").glob("*"))


def test_git_missing_is_its_own_error(tcp_daemon, tmp_path, monkeypatch):
    repo = repository(tmp_path / "repo")
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))  # the in-process daemon's PATH
    client = client_of(tcp_daemon, "repl")
    with pytest.raises(GitMissing, match="git is not on the daemon's PATH"):
        client.call("session.create", runtime="demo", cwd=str(repo), isolation="worktree")
    assert client.call("session.list")["sessions"] == []


def test_the_cli_creates_shows_and_closes_a_worktree_session(unix_daemon, tmp_path):
    repo = repository(tmp_path / "repo")
    at = ("--data-dir", str(unix_daemon.data_dir))
    made = cli("session", "new", "demo", "--cwd", str(repo), "--worktree", *at)
    assert made.returncode == 0, made.stderr
    session = made.stdout.strip()
    shown = cli("session", "show", session, *at).stdout
    assert f"branch cc-daemon/{session} of {repo}" in shown
    closed = cli("session", "close", session, "--delete-branch", *at)
    assert closed.returncode == 0, closed.stderr
    assert f"branch cc-daemon/{session} deleted" in closed.stdout and "removed" in closed.stdout
    assert branches(repo) == ["main"]
