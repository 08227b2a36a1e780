"""``cheetahclaws daemon doctor``: check a profile's daemon and explain each finding with its fix.

Owns: running ``cc_daemon.diagnostics``' checks with a real ping of a running daemon, adding
the one check that knows the service manager (is this profile's unit or agent installed,
and active), and printing the findings as text or JSON with the exit code.

Must not: change anything: every check only reads, so doctor is safe while the daemon runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess

from cc_daemon import diagnostics
from cc_daemon.diagnostics import INFO, OK, PROBLEM, WARNING, Finding
from cc_daemon.storage import DataDir

from .common import add_data_dir, documented_action

MARKS = {OK: "ok", INFO: "info", WARNING: "WARN", PROBLEM: "FAIL"}


def add_action(actions: argparse._SubParsersAction) -> None:
    doctor = documented_action(
        actions, "doctor", "check the daemon's files, database, disk, runtimes, service and whether it answers; "
                           "each finding with its fix (safe while the daemon runs)",
        "cheetahclaws daemon doctor --profile work --json",
        "0 all is well (findings marked info are not problems: no daemon running, a runtime not installed); "
        "1 a warning or a problem was found")
    add_data_dir(doctor)
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(run=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    layout = DataDir.resolve(args.data_dir)
    findings = diagnostics.run_checks(layout, ping)
    if args.profile is not None:
        findings.append(check_service(args.profile))
    healthy = all(finding.status in (OK, INFO) for finding in findings)
    if args.json:
        print(json.dumps({"ok": healthy, "data_dir": str(layout.root),
                          "findings": [finding.as_dict() for finding in findings]}, indent=2))
        return 0 if healthy else 1
    for finding in findings:
        print(f"{MARKS[finding.status]:<5} {finding.check}: {finding.detail}")
        if finding.fix and finding.status != OK:
            print(f"      fix: {finding.fix}")
    print("all is well" if healthy else "something needs attention (see WARN / FAIL above)")
    return 0 if healthy else 1


def ping(found) -> float:
    """A running daemon's round trip for ``system.ping``, in milliseconds (the connection's
    set-up included: it is what every client pays)."""
    from cc_daemon.client import Client, Endpoint

    token = found.token_path.read_text().strip() if found.token_path is not None else None
    with Client(Endpoint.from_address(found.address.url(), token), kind="cli", client_id=None, timeout=5.0) as client:
        return diagnostics.timed(lambda: client.call("system.ping"))


def check_service(profile: str) -> Finding:
    from .daemon_service import Service, service_of_platform

    service: Service = service_of_platform(profile)
    if not service.path.exists():
        return Finding("service", INFO, f"no service installed for profile {profile} ({service.path})",
                       f"cheetahclaws daemon install-service --profile {profile}")
    if service.platform != "systemd" or shutil.which("systemctl") is None:
        return Finding("service", OK, f"{service.path} is installed")
    result = subprocess.run(["systemctl", "--user", "is-active", f"{service.name}.service"], capture_output=True,
                            text=True, timeout=10)
    state = result.stdout.strip() or result.stderr.strip() or "unknown"
    if state == "active":
        return Finding("service", OK, f"{service.name} is installed and active")
    return Finding("service", WARNING, f"{service.name} is installed but {state}",
                   f"systemctl --user start {service.name}; journalctl --user -u {service.name} says why it stopped")
