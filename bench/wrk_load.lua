-- wrk script for bench/service.py: GET the paths of WRK_PATHS (space-separated) in turn
-- for wrk's -d, then print the figures as one JSON line.
local paths, i = {}, 0
for p in string.gmatch(os.getenv("WRK_PATHS") or "/", "[^ ]+") do paths[#paths + 1] = p end

request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
