"""A runtime (run through the ``custom`` runtime) that writes time-stamped text lines, for
``bench/runtime_latency.py``.

Each turn's text is ``COUNT RATE``: COUNT ``text`` messages, one line each, ``RATE`` lines
per second (0: as fast as the pipe takes them), then ``turn_done``. Line i reads
``"<i> <CLOCK_MONOTONIC ns at its write>\\n"``; CLOCK_MONOTONIC is one clock for every
process of a Linux machine, so a subscriber subtracts it from its own reading at arrival.
Paced lines are written on a schedule (never "sleep one period after the last write"), so
a slow write does not lower the rate.
"""

import json
import sys
import time

out = sys.stdout.buffer


def send(message: dict) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def stream(turn_id: str, count: int, rate: float) -> None:
    start = time.monotonic()
    for i in range(count):
        if rate > 0:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        send({"type": "text", "turn_id": turn_id, "text": f"{i} {time.monotonic_ns()}\n"})
    send({"type": "turn_done", "turn_id": turn_id, "status": "completed"})


def main() -> None:
    json.loads(sys.stdin.readline())  # init
    send({"type": "ready", "protocol": 1, "runtime": "paced", "version": "1.0"})
    for line in sys.stdin:
        message = json.loads(line)
        if message["type"] == "turn":
            count, rate = message["text"].split()
            stream(message["turn_id"], int(count), float(rate))
        elif message["type"] == "stop":
            break


if __name__ == "__main__":
    main()
