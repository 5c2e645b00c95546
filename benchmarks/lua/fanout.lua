-- Spread the load over ids 1..1000 so that no server answers from a one-key cache.
-- The requests are built once in init(); request() only picks the next one.
local requests = {}
local next_id = 0

function init(args)
  for i = 1, 1000 do
    requests[i] = wrk.format("GET", "/fanout/" .. i)
  end
end

function request()
  next_id = next_id % 1000 + 1
  return requests[next_id]
end
