-- wrk script of the Node tail workload (bench/node/run.sh, bench/node/pairs.sh): counts the
-- answers per worker (the first number in the body, the pid in the anchor's answer) and
-- prints, at the end, the latency percentiles and the spread over the workers (max/min).
counts = {}
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  local id = body and body:match("%d+") or "none"
  counts[id] = (counts[id] or 0) + 1
end
function done(summary, latency, requests)
  io.write(string.format("latency-us: p50 %d p99 %d p99.9 %d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
  local lo, hi, list = math.huge, 0, ""
  for _, t in ipairs(threads) do
    for id, n in pairs(t:get("counts")) do
      list = list .. " " .. n
      if n < lo then lo = n end
      if n > hi then hi = n end
    end
  end
  io.write(string.format("spread: max/min %.3f (%s )\n", hi / lo, list))
end
