"""``cheetahclaws daemon install-service | uninstall-service``: run the daemon under the
user's service manager, started at login and restarted if it crashes.

Owns: the systemd user unit (Linux) and the launchd agent (macOS) of a profile: their text,
where they live, and the ``systemctl --user`` / ``launchctl`` calls that enable, start, stop
and remove them, with ``--dry-run`` printing what would be written and run instead.

Must not: speak the notify protocol (``cc_daemon.service_notify`` does, inside the daemon),
or touch the daemon's data dir: the unit only says how to run ``serve``.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cc_daemon import profiles
from cc_daemon.storage import atomic_write

from .common import add_data_dir, documented_action, fail

PLATFORMS = ("systemd", "launchd")
LAUNCHD_PREFIX = "dev.cheetahclaws."
#: How long the daemon may go without a watchdog ping before systemd restarts it. The pings
#: come from the daemon's timer thread; a minute is far beyond any pause it takes on purpose.
WATCHDOG_SEC = 60
#: Environment the unit carries from the shell that installed it: the profile's base
#: directory, and the PATH the runtimes (claude, codex, git) are found on; a user manager's
#: own PATH is minimal.
CARRIED_ENV = ("CHEETAHCLAWS_HOME", "PATH")
#: serve's exit code for bad usage or a start that cannot succeed (address in use, another
#: daemon on the data dir, an unsafe path): restarting would only repeat it.
SERVE_CANNOT_START = 2


@dataclass(frozen=True)
class Service:
    """One profile's service definition: what it runs, and where its file goes."""

    platform: str
    profile: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return profiles.service_name(self.profile)

    @property
    def label(self) -> str:
        return LAUNCHD_PREFIX + self.name

    @property
    def path(self) -> Path:
        if self.platform == "launchd":
            return Path.home() / "Library" / "LaunchAgents" / f"{self.label}.plist"
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "systemd" / "user" / f"{self.name}.service"

    def text(self) -> bytes:
        return launchd_plist(self) if self.platform == "launchd" else systemd_unit(self).encode()

    def enable_commands(self, start: bool) -> list[list[str]]:
        if self.platform == "launchd":
            return [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(self.path)]]
        return [["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", *(["--now"] if start else []), f"{self.name}.service"]]

    def disable_commands(self) -> list[list[str]]:
        if self.platform == "launchd":
            return [["launchctl", "bootout", f"gui/{os.getuid()}/{self.label}"]]
        return [["systemctl", "--user", "disable", "--now", f"{self.name}.service"]]

    def after_removal_commands(self) -> list[list[str]]:
        return [] if self.platform == "launchd" else [["systemctl", "--user", "daemon-reload"]]


def systemd_quote(word: str) -> str:
    """``word`` as one argument of ``ExecStart=`` or one ``Environment=`` assignment:
    specifiers (``%``) and variables (``$``) doubled so that systemd leaves them alone, and
    double quotes around anything with a space, a quote or a backslash."""
    word = word.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%$+=:,./-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(service: Service) -> str:
    environment = "".join(f"Environment={systemd_quote(f'{name}={value}')}\n" for name, value in service.env)
    return (
        f"# Written by `cheetahclaws daemon install-service --profile {service.profile}`; "
        "`cheetahclaws daemon uninstall-service` removes it.\n"
        "[Unit]\n"
        f"Description=cc_daemon, the local control plane for AI coding agents (profile {service.profile})\n"
        "\n[Service]\n"
        # The daemon says READY=1 once it accepts connections, STOPPING=1 when it stops, and
        # WATCHDOG=1 from its timer thread; only its main process may speak for it.
        "Type=notify\nNotifyAccess=main\n"
        f"ExecStart={' '.join(systemd_quote(word) for word in service.argv)}\n"
        f"{environment}"
        "Restart=on-failure\nRestartSec=2\n"
        f"RestartPreventExitStatus={SERVE_CANNOT_START}\n"
        f"WatchdogSec={WATCHDOG_SEC}\n"
        # SIGTERM to the daemon alone: it stops its agents' runtimes itself and keeps their
        # sessions resumable; whatever is left after the timeout is killed.
        "KillMode=mixed\nTimeoutStopSec=30\n"
        "UMask=0077\n"
        "StandardOutput=journal\nStandardError=journal\n"
        "\n[Install]\nWantedBy=default.target\n")


def launchd_plist(service: Service) -> bytes:
    logs = profiles.data_dir_of(service.profile) / "logs"
    return plistlib.dumps({
        "Label": service.label,
        "ProgramArguments": list(service.argv),
        "EnvironmentVariables": dict(service.env),
        "RunAtLoad": True,
        # Restart after a crash, not after a clean stop (daemon stop, system.shutdown).
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Background",
        "Umask": 0o077,
        "StandardOutPath": str(logs / "launchd.out.log"),
        "StandardErrorPath": str(logs / "launchd.err.log"),
    })


def add_actions(actions: argparse._SubParsersAction) -> None:
    install = documented_action(
        actions, "install-service", "run the daemon under your service manager: started at login, restarted "
                                    "after a crash (a systemd user unit, or a launchd agent on macOS)",
        "cheetahclaws daemon install-service --listen tcp://127.0.0.1:8765 --dry-run",
        "0 installed and started (or printed, with --dry-run); 1 written but the service manager could not "
        "enable it (the message says what to run)")
    add_data_dir(install)
    install.add_argument("--listen", metavar="URL", action="append", default=[],
                         help="as serve --listen (repeatable); none: the profile's Unix socket")
    add_common(install)
    install.set_defaults(run=run_install)

    uninstall = documented_action(actions, "uninstall-service", "stop and remove the daemon's service",
                                  "cheetahclaws daemon uninstall-service --profile work",
                                  "0 removed (or there was none); 1 the service manager could not stop it")
    add_data_dir(uninstall)
    add_common(uninstall)
    uninstall.set_defaults(run=run_uninstall)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print what would be written and run; change nothing")
    # Chosen from the operating system; the tests write a launchd agent on Linux with it.
    parser.add_argument("--platform", choices=PLATFORMS, default=None, help=argparse.SUPPRESS)


def service_of(args: argparse.Namespace, listens: list[str]) -> Service:
    if args.profile is None:
        fail("a service runs a profile; use --profile NAME rather than --data-dir", 2)
    return service_of_platform(args.profile, args.platform, listens)


def service_of_platform(profile: str, platform: str | None = None, listens: list[str] | tuple = ()) -> Service:
    """Profile ``profile``'s service on ``platform`` (default: this operating system's)."""
    platform = platform or ("launchd" if sys.platform == "darwin" else "systemd")
    argv = (sys.executable, "-m", "cc_daemon", "serve", "--profile", profile,
            *(word for url in listens for word in ("--listen", url)))
    env = tuple((name, os.environ[name]) for name in CARRIED_ENV if os.environ.get(name))
    return Service(platform, profile, argv, env)


def run_install(args: argparse.Namespace) -> int:
    from cc_daemon.transport.addresses import AddressError, ListenAddress

    for url in args.listen:
        try:
            ListenAddress.parse(url)
        except AddressError as exc:
            fail(str(exc), 2)
    service = service_of(args, args.listen)
    running = daemon_running(args)
    commands = service.enable_commands(start=not running)
    if args.dry_run:
        print(f"would write {service.path}:\n")
        print(service.text().decode(), end="" if service.platform == "systemd" else "\n")
        print("\nwould run:\n" + "\n".join("  " + " ".join(command) for command in commands))
        return 0
    service.path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(service.path, service.text())
    print(f"wrote {service.path}")
    if not run_all(commands):
        return 1
    if running:
        print(f"a daemon of profile {args.profile} is already running outside the service manager: stop it "
              f"(cheetahclaws daemon stop --profile {args.profile}), then start the service: "
              + ("systemctl --user start " + service.name if service.platform == "systemd"
                 else f"launchctl kickstart gui/{os.getuid()}/{service.label}"))
    else:
        print(f"{service.name} is enabled and started; it starts at login and restarts after a crash")
    if service.platform == "systemd":
        print(linger_hint())
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    service = service_of(args, [])
    if not service.path.exists():
        print(f"no service installed for profile {args.profile} ({service.path} does not exist)")
        return 0
    if args.dry_run:
        steps = [*service.disable_commands(), ["rm", str(service.path)], *service.after_removal_commands()]
        print("would run:\n" + "\n".join("  " + " ".join(command) for command in steps))
        return 0
    stopped = run_all(service.disable_commands())
    service.path.unlink()
    print(f"removed {service.path}")
    return 0 if run_all(service.after_removal_commands()) and stopped else 1


def daemon_running(args: argparse.Namespace) -> bool:
    from .daemon_verbs import daemon_info

    return daemon_info(args)[2]


def run_all(commands: list[list[str]]) -> bool:
    """Run each command in turn, saying what failed and why; False at the first failure."""
    for command in commands:
        if shutil.which(command[0]) is None:
            print(f"cheetahclaws: {command[0]} not found: is this machine's service manager running? "
                  f"Run yourself: {' '.join(command)}", file=sys.stderr)
            return False
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            why = (result.stderr or result.stdout).strip().splitlines()
            print(f"cheetahclaws: `{' '.join(command)}` failed ({result.returncode}): "
                  f"{why[-1] if why else 'no message'}", file=sys.stderr)
            return False
    return True


def linger_hint() -> str:
    """Whether the user manager outlives a logout, and what to run when it does not."""
    user = os.environ.get("USER") or str(os.getuid())
    hint = (f"to keep it running without a login session (after a reboot, over ssh), run: "
            f"loginctl enable-linger {user}")
    if shutil.which("loginctl") is None:
        return hint
    result = subprocess.run(["loginctl", "show-user", user, "--property=Linger"], capture_output=True, text=True,
                            timeout=10)
    if result.returncode == 0 and result.stdout.strip() == "Linger=yes":
        return "lingering is on: the service runs without a login session too"
    return hint
