"""A runtime that ignores cancel, stop and SIGTERM: only SIGKILL ends it."""

import json
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
out = sys.stdout


def send(message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


init = json.loads(sys.stdin.readline())
send({"type": "ready", "protocol": 1, "runtime": "stubborn", "version": "1.0"})
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "turn":
        send({"type": "text", "turn_id": message["turn_id"], "text": "not listening"})
while True:
    time.sleep(1)
