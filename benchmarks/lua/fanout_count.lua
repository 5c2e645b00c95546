-- Like fanout.lua, but stop after N responses (first script argument):
--   wrk -t1 ... -s fanout_count.lua URL -- 1000
-- wrk's main thread would still sleep until -d is over, so the line written to
-- stderr tells benchmarks/harness.py to send SIGINT, on which wrk prints its
-- summary and exits. Use -t1: the count is per thread.
local requests = {}
local next_id = 0
local limit = nil
local seen = 0

function init(args)
  for i = 1, 1000 do
    requests[i] = wrk.format("GET", "/fanout/" .. i)
  end
  limit = tonumber(args[1])
end

function request()
  next_id = next_id % 1000 + 1
  return requests[next_id]
end

function response(status, headers, body)
  seen = seen + 1
  if limit and seen == limit then
    wrk.thread:stop()
    io.stderr:write("stop-after: reached\n")
    io.stderr:flush()
  end
end
