-- wrk script for scripts/bench_tokens.sh: POST /flow/verify with a random count token as the
-- bearer. Environment: BENCH_TOKENS_FILE (one token per line).
local tokens = {}
local threads = {}

function setup(thread)
    thread:set("tid", #threads)
    table.insert(threads, thread)
end

function init(args)
    for line in io.lines(os.getenv("BENCH_TOKENS_FILE")) do
        table.insert(tokens, line)
    end
    math.randomseed(os.time() * 1000 + (tid or 0))
    wrk.method = "POST"
end

function request()
    local headers = { ["Authorization"] = "Bearer " .. tokens[math.random(1, #tokens)] }
    return wrk.format("POST", nil, headers, nil)
end
