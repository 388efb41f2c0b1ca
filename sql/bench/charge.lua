-- wrk script for scripts/bench.sh: POST /api/internal/credits/charge with a unique operation_id
-- per request (<run>-h-<thread>-<counter>) on a random user_1 .. user_N.
-- Environment: BENCH_SERVICE_TOKEN (X-Service-Token), BENCH_RUN (prefix), BENCH_NUSERS (N).
-- Usage: wrk -t2 -c16 -d15s --latency -s sql/bench/charge.lua http://127.0.0.1:PORT/api/internal/credits/charge

local threads = {}

function setup(thread)
    thread:set("tid", #threads)
    table.insert(threads, thread)
end

local counter = 0
local run, nusers

function init(args)
    run = os.getenv("BENCH_RUN") or tostring(os.time())
    nusers = tonumber(os.getenv("BENCH_NUSERS") or "10000")
    math.randomseed(os.time() * 1000 + (tid or 0))
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["X-Service-Token"] = os.getenv("BENCH_SERVICE_TOKEN") or ""
end

function request()
    counter = counter + 1
    local body = string.format(
        '{"user_id":"user_%d","cost_usd":0.0001,"operation_id":"%s-h-%d-%d"}',
        math.random(1, nusers), run, tid or 0, counter)
    return wrk.format(nil, nil, nil, body)
end
