-- wrk script for bench/deploy_bench.py: counts what wrk's own summary does not.
--
-- wrk's "Non-2xx or 3xx responses" counts statuses above 399 only; this counts every status
-- outside 200-299, by class, and the version in the body of each 200 (the demo answers
-- `GET /` with "<VERSION>\n"). done() prints one line that the driver parses:
--   LUA non2xx=<n> s3xx=<n> s4xx=<n> s502=<n> s503=<n> s504=<n> s5xx_other=<n> v1=<n> v2=<n> other_body=<n>
-- Counters are scalars because wrk copies them out of each thread's Lua state with thread:get.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   non2xx, s3xx, s4xx, s502, s503, s504, s5xx_other = 0, 0, 0, 0, 0, 0, 0
   v1, v2, other_body = 0, 0, 0
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      if body == "v1\n" then
         v1 = v1 + 1
      elseif body == "v2\n" then
         v2 = v2 + 1
      else
         other_body = other_body + 1
      end
      return
   end
   non2xx = non2xx + 1
   if status < 400 then
      s3xx = s3xx + 1
   elseif status < 500 then
      s4xx = s4xx + 1
   elseif status == 502 then
      s502 = s502 + 1
   elseif status == 503 then
      s503 = s503 + 1
   elseif status == 504 then
      s504 = s504 + 1
   else
      s5xx_other = s5xx_other + 1
   end
end

function done(summary, latency, requests)
   local names = { "non2xx", "s3xx", "s4xx", "s502", "s503", "s504", "s5xx_other", "v1", "v2", "other_body" }
   local totals = {}
   for _, name in ipairs(names) do
      totals[name] = 0
   end
   for _, thread in ipairs(threads) do
      for _, name in ipairs(names) do
         totals[name] = totals[name] + (thread:get(name) or 0)
      end
   end
   local parts = {}
   for _, name in ipairs(names) do
      table.insert(parts, name .. "=" .. totals[name])
   end
   io.write("LUA " .. table.concat(parts, " ") .. "\n")
end
