"""A primary for the primary-death test: two workers that each leave a child in their process
group and a grandchild in a session of its own (setsid); prints the workers' pids on one line
once they run, then waits to be killed."""

import time

import rcluster

SCRIPT = "sleep 300 & setsid sleep 300 & exec sleep 300"

sup = rcluster.Supervisor(["sh", "-c", SCRIPT], workers=2, ready_on="spawn")
sup.start()
pids = [sup.wait_for("ready", 10.0).pid for _ in range(2)]
print(" ".join(map(str, pids)), flush=True)
time.sleep(60)
