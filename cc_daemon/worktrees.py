"""Git worktrees that isolate sessions (``session.create`` with ``isolation: "worktree"``).

Owns: making a session's own worktree, on a new branch ``cc-daemon/<session id>`` from the
commit checked out in the repository that holds the asked cwd, under
``<data dir>/worktrees/<session id>``; the directory in it where the runtime runs (the same
subdirectory the cwd was in the repository); removing it when the session is closed,
keeping the branch unless asked to delete it, and keeping a worktree that holds changes
unless asked to discard them; and the refusals (``WorktreeRefused``): git missing, a cwd in
no git work tree (git's own message says why, such as a repository of another user), and a
repository no branch can be made from (no commit yet, or tracked files with uncommitted
changes, which the new branch would silently leave behind).

Must not: know sessions (``sessions.SessionManager`` calls it), hold a lock while git runs,
or touch anything of the repository but its own worktree and branch: it runs only
``git worktree add``, ``git worktree remove`` and ``git branch -D`` of that branch.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .refused import Refused
from .safe_paths import make_private_dir

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("cc_daemon.sessions")

ISOLATIONS = ("none", "worktree")
BRANCH_PREFIX = "cc-daemon/"
GIT_TIMEOUT_S = 60.0
#: The daemon's own git environment must not redirect the user's repository elsewhere.
GIT_REDIRECTS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                 "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES")
#: Changed paths named in a refusal (the rest are counted).
SHOWN_CHANGES = 10


class WorktreeRefused(Refused):
    """A worktree cannot be made (or git cannot be run) for this session."""


class GitMissing(WorktreeRefused):
    """No ``git`` on the daemon's PATH."""


class NotAGitRepository(WorktreeRefused):
    """The cwd is in no git work tree (or git refuses the repository, e.g. another user's)."""


class WorktreeUnavailable(WorktreeRefused):
    """The repository is in a state no branch can be made from, or git failed to make one."""


@dataclass(frozen=True)
class Worktree:
    """One session's worktree, as kept in its record."""

    path: str
    branch: str
    repo: str
    base: str
    cwd: str

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Worktree:
        return cls(**record)


class Worktrees:
    """Makes and removes session worktrees under ``root``. Thread-safe: it keeps no state."""

    def __init__(self, root: Path, timeout_s: float = GIT_TIMEOUT_S):
        self.root = root
        self.timeout_s = timeout_s

    def create(self, cwd: Path, session_id: str) -> Worktree:
        git = self._git_program()
        inside = self._run(git, cwd, "rev-parse", "--is-inside-work-tree", "--show-toplevel")
        if inside.returncode != 0:
            raise NotAGitRepository(f"{cwd} is not in a git work tree: {first_line(inside.stderr)}",
                                    cwd=str(cwd), reason="not_a_repository", git=first_line(inside.stderr))
        lines = inside.stdout.splitlines()
        if lines[:1] != ["true"] or len(lines) < 2:
            raise NotAGitRepository(f"{cwd} is inside a git directory, not a work tree", cwd=str(cwd),
                                    reason="not_a_work_tree")
        repo = Path(lines[1])
        head = self._run(git, repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        if head.returncode != 0:
            raise WorktreeUnavailable(f"{repo} has no commit yet to branch from; commit something first",
                                      cwd=str(cwd), reason="no_commit")
        base = head.stdout.strip()
        changed = self._run(git, repo, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
        if changed:
            paths = [line[3:] for line in changed]
            raise WorktreeUnavailable(
                f"{repo} has uncommitted changes to {len(paths)} tracked file(s) that a new branch would leave "
                f"behind ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''}); commit or stash them first",
                cwd=str(cwd), reason="uncommitted_changes", changed=paths[:SHOWN_CHANGES], count=len(paths))
        path, branch = self.root / session_id, BRANCH_PREFIX + session_id
        make_private_dir(self.root)
        added = self._run(git, repo, "worktree", "add", "--quiet", "-b", branch, str(path), base)
        if added.returncode != 0:
            raise WorktreeUnavailable(f"git could not make a worktree of {repo}: {first_line(added.stderr)}",
                                      cwd=str(cwd), reason="git_failed", git=first_line(added.stderr))
        inner = Path(cwd).resolve().relative_to(repo.resolve())
        log.info("session %s: worktree %s on branch %s of %s", session_id, path, branch, repo)
        return Worktree(str(path), branch, str(repo), base, str(path / inner))

    def remove(self, worktree: Worktree, *, delete_branch: bool = False,
               discard_changes: bool = False) -> dict[str, Any]:
        """Remove the worktree (and the branch if asked); what was done, and why not if not.
        Never raises: a session ends whatever becomes of its worktree."""
        outcome: dict[str, Any] = {"path": worktree.path, "branch": worktree.branch, "removed": False,
                                   "branch_deleted": False, "reason": None}
        git = shutil.which("git")
        if git is None:
            outcome["reason"] = "git is not on the daemon's PATH any more"
            return outcome
        if Path(worktree.path).exists():
            removed = self._run(git, Path(worktree.repo), "worktree", "remove",
                                *(["--force"] if discard_changes else []), worktree.path)
            if removed.returncode != 0:
                outcome["reason"] = (f"kept: {first_line(removed.stderr)}; commit what it holds, or remove it "
                                     f"with git worktree remove --force {worktree.path}")
                return outcome
        else:  # removed by hand: git still lists it until pruned
            self._run(git, Path(worktree.repo), "worktree", "prune")
        outcome["removed"] = True
        if delete_branch:
            deleted = self._run(git, Path(worktree.repo), "branch", "-D", worktree.branch)
            outcome["branch_deleted"] = deleted.returncode == 0
            if deleted.returncode != 0:
                outcome["reason"] = f"branch kept: {first_line(deleted.stderr)}"
        return outcome

    @staticmethod
    def _git_program() -> str:
        git = shutil.which("git")
        if git is None:
            raise GitMissing("git is not on the daemon's PATH; install git, or create the session without "
                             "isolation", reason="git_missing")
        return git

    def _run(self, git: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
        import subprocess  # here: a daemon that never isolates a session never pays for it (~10 ms)

        env = {name: value for name, value in os.environ.items() if name not in GIT_REDIRECTS}
        env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        try:
            return subprocess.run([git, *args], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=self.timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 1, "", f"git {args[0]} took longer than {self.timeout_s:g} s")
        except OSError as exc:
            return subprocess.CompletedProcess(args, 1, "", f"git could not run in {cwd}: {exc.strerror}")


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")
