-- wrk script of the HTTP benchmarks (bench/http.sh, bench/node/run.sh, bench/node/pairs.sh):
-- counts the answers per worker (the first number in the body: the worker id of hello-worker,
-- the pid in Node's answer) and prints, at the end, the latency percentiles (µs), the spread
-- over the workers (max/min) and each worker's count. A Lua call per response: used only
-- where the spread is reported.
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
  local all, ids = {}, {}
  for _, t in ipairs(threads) do
    for id, n in pairs(t:get("counts")) do all[id] = (all[id] or 0) + n end
  end
  local lo, hi, k = math.huge, 0, 0
  for id, n in pairs(all) do
    k = k + 1
    table.insert(ids, id .. "=" .. n)
    if n < lo then lo = n end
    if n > hi then hi = n end
  end
  table.sort(ids)
  io.write(string.format("spread: %d workers, max/min %.3f, max %d, min %d\n", k, hi / lo, hi, lo))
  io.write("per-worker: " .. table.concat(ids, " ") .. "\n")
end
