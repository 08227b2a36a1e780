"""A runtime (run through the ``custom`` runtime) that floods its stdout as fast as the pipe takes it.

Each turn's text says what to write, then the turn ends ``completed``:
  ``lines N WIDTH``  N ``text`` messages, message i being ``"<i, 8 digits> " + WIDTH x "x" + "\\n"``
                     (so a reader can check that every message arrived, once and in order);
  ``endless WIDTH``  such messages until the daemon cancels the turn (then ``cancelled``);
  ``giant BYTES``    one line of BYTES bytes that never ends in time (no newline until the end):
                     far over the protocol's line limit, which the daemon must drop, not buffer.
"""

import json
import sys
import threading

out = sys.stdout.buffer
write_lock = threading.Lock()


def send(message: dict) -> None:
    with write_lock:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()


def text_line(turn_id: str, i: int, width: int) -> bytes:
    message = {"type": "text", "turn_id": turn_id, "text": f"{i:08d} " + "x" * width + "\n"}
    return json.dumps(message).encode() + b"\n"


def flood(turn_id: str, count: int | None, width: int, cancelled: threading.Event) -> str:
    i = 0
    while (count is None or i < count) and not cancelled.is_set():
        batch = b"".join(text_line(turn_id, n, width) for n in range(i, i + 64 if count is None
                                                                      else min(i + 64, count)))
        with write_lock:
            out.write(batch)
        i += batch.count(b"\n")
    with write_lock:
        out.flush()
    return "cancelled" if cancelled.is_set() else "completed"


def giant(size: int) -> None:
    block = b"y" * (1 << 20)
    with write_lock:
        for _ in range(size // len(block)):
            out.write(block)
        out.write(b"\n")
        out.flush()


def run_turn(turn_id: str, words: list[str], cancelled: threading.Event) -> None:
    if words[0] == "lines":
        status = flood(turn_id, int(words[1]), int(words[2]), cancelled)
    elif words[0] == "endless":
        status = flood(turn_id, None, int(words[1]), cancelled)
    else:
        giant(int(words[1]))
        status = "completed"
    send({"type": "turn_done", "turn_id": turn_id, "status": status})


def main() -> None:
    json.loads(sys.stdin.readline())  # init
    send({"type": "ready", "protocol": 1, "runtime": "flood", "version": "1.0"})
    cancels: dict[str, threading.Event] = {}
    for line in sys.stdin:
        message = json.loads(line)
        if message["type"] == "turn":
            cancels[message["turn_id"]] = cancelled = threading.Event()
            threading.Thread(target=run_turn, args=(message["turn_id"], message["text"].split(), cancelled),
                             daemon=True).start()
        elif message["type"] == "cancel" and message["turn_id"] in cancels:
            cancels[message["turn_id"]].set()
        elif message["type"] == "stop":
            break


if __name__ == "__main__":
    main()
