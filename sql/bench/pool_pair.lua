-- wrk script for scripts/bench_pools.sh: acquire / release pairs over HTTP. Each thread keeps the
-- leases it was given; the next request of the thread releases one if it has any, else acquires
-- on a random provider. Environment: BENCH_PROVIDERS_FILE (one provider id per line),
-- BENCH_SERVICE_TOKEN.
local providers = {}
local pending = {}
local threads = {}

function setup(thread)
    thread:set("tid", #threads)
    table.insert(threads, thread)
end

function init(args)
    for line in io.lines(os.getenv("BENCH_PROVIDERS_FILE")) do
        table.insert(providers, line)
    end
    math.randomseed(os.time() * 1000 + (tid or 0))
end

local headers = {
    ["Content-Type"] = "application/json",
    ["X-Service-Token"] = os.getenv("BENCH_SERVICE_TOKEN"),
}

function request()
    local lease = table.remove(pending)
    if lease then
        return wrk.format("POST", "/api/v1/pool/accounts/" .. lease.account .. "/release", headers,
            '{"lease_id":"' .. lease.id .. '","input_tokens":40,"output_tokens":60,"status_code":200,"latency_ms":250,"success":true}')
    end
    local p = providers[math.random(1, #providers)]
    return wrk.format("POST", "/api/v1/pool/" .. p .. "/acquire", headers, '{"tokens_needed":100,"model":"gpt-4o"}')
end

function response(status, headers, body)
    local id = body:match('"lease_id"%s*:%s*"([%x%-]+)"')
    local account = body:match('"account_id"%s*:%s*"([%x%-]+)"')
    if id and account and not body:match('"released"') then
        table.insert(pending, { id = id, account = account })
    end
end
