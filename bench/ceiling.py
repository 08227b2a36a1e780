"""The ceiling: the fastest a bare stdlib threading HTTP server answers on this machine.

Owns: a ``ThreadingHTTPServer`` (and its Unix-socket twin) tuned the way cc_daemon's
transport is (HTTP/1.1 keep-alive, TCP_NODELAY, a large listen backlog, one write per
response) that answers every POST with the same small JSON-RPC body and does nothing
else: no auth, no JSON parsing, no routing. cc_daemon's RPC numbers are reported as a
fraction of this.

Must not: grow features. Anything it does beyond framing lowers the ceiling.

Run as ``python -m bench.ceiling --listen tcp://127.0.0.1:0`` (or ``unix:///path``); it
prints ``listening <url>`` once bound and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'{"jsonrpc":"2.0","id":1,"result":"pong"}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(BODY), BODY))


class FixedAnswer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        if self.request.family != socket.AF_UNIX:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Connection", "").lower() == "close":
            self.close_connection = True
            self.wfile.write(RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        else:
            self.wfile.write(RESPONSE)

    def log_message(self, format, *args) -> None:
        pass


class TcpCeiling(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip HTTPServer's getfqdn() DNS lookup


class UnixCeiling(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 1024

    def get_request(self):
        request, _ = self.socket.accept()
        return request, ("unix", 0)


def serve(listen: str) -> None:
    if listen.startswith("unix://"):
        path = listen[len("unix://"):]
        server: socketserver.BaseServer = UnixCeiling(path, FixedAnswer)
        url = listen
    else:
        host, _, port = listen[len("tcp://"):].rpartition(":")
        server = TcpCeiling((host, int(port)), FixedAnswer)
        url = f"tcp://{host}:{server.server_address[1]}"
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"listening {url}", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="tcp://127.0.0.1:0 or unix:///abs/path.sock")
    serve(parser.parse_args().listen)


if __name__ == "__main__":
    main()
