"""The README's Python primary, as written there. Only the address (argv[1]), a reply delay
(argv[2] seconds, so that requests are in flight when a signal comes) and the number of
workers are the test's; events are printed as the README prints them, flushed."""

import asyncio
import sys

import rcluster

DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


class Hello(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        asyncio.get_running_loop().call_later(DELAY, self.reply)

    def reply(self):
        self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n")
        self.t.close()


if rcluster.is_worker():
    asyncio.run(rcluster.aio.serve(Hello))  # connections handed over by the primary
else:
    with rcluster.Supervisor(workers=2, listen=[sys.argv[1]], ready_on="explicit") as sup:
        for ev in sup.events():  # SIGTERM or Ctrl-C stops the cluster and ends this loop
            print(ev, flush=True)
    print("ENDED", flush=True)
