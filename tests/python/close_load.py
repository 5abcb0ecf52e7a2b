"""A bounded HTTP load of one request per connection, for stop-under-load tests.

    python3 close_load.py HOST:PORT SECONDS CLIENTS

Each client thread connects, sends one `Connection: close` request and reads the answer to the
end, again and again, for SECONDS at most. It sorts every attempt into one of three outcomes:

- answered: a full `200` answer;
- refused: the connection was never accepted (refused, or the connect timed out) — what a
  stopped server must do to new clients;
- failed: the connection was accepted, then cut or reset before a full answer — what a stop
  must never do.

It prints one line `answered=N refused=N failed=N` (and the first failures) and exits 0.
"""

import socket
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
seconds, clients = float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + seconds
lock = threading.Lock()
counts = {"answered": 0, "refused": 0, "failed": 0}
failures: list[str] = []
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def tally(outcome: str, detail: str = "") -> None:
    with lock:
        counts[outcome] += 1
        if detail and len(failures) < 5:
            failures.append(detail)


def client() -> None:
    while time.monotonic() < deadline:
        try:
            conn = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            tally("refused")
            time.sleep(0.01)
            continue
        try:
            conn.settimeout(10)
            conn.sendall(REQUEST)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            if reply.startswith(b"HTTP/1.1 200"):
                tally("answered")
            else:
                tally("failed", f"incomplete answer {reply[:60]!r}")
        except OSError as e:
            tally("failed", repr(e))
        finally:
            conn.close()


threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(" ".join(f"{k}={v}" for k, v in counts.items()))
for f in failures:
    print("failure:", f)
