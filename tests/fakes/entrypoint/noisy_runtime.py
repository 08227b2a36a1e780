"""A runtime that writes garbage before its ready, then echoes turns properly."""

import json
import sys

out = sys.stdout.buffer


def send(message: dict) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


init = json.loads(sys.stdin.readline())
for garbage in (b"this is not json", b'{"type": "bogus"}', b'{"type": "text", "turn_id": "t1"}', b"[1, 2]",
                b"\xff\xfe", b"x" * (2 * 1024 * 1024), b'{"type": "text", "turn_id": "t1", "text": "stale"}'):
    out.write(garbage + b"\n")
send({"type": "ready", "protocol": 1, "runtime": "noisy", "version": "1.0"})
for line in sys.stdin:
    message = json.loads(line)
    if message["type"] == "turn":
        send({"type": "text", "turn_id": message["turn_id"], "text": "still here"})
        send({"type": "turn_done", "turn_id": message["turn_id"], "status": "completed"})
    elif message["type"] == "stop":
        break
