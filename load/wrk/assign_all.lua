-- POST /v1/assignments with a fresh unit id per request: every answer
-- logs exposures and makes first exposures (issue 14's assign-all target).
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  n = 0
  wrk.method = "POST"
  wrk.path = "/v1/assignments"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"unit_id":"u' .. tid .. '-' .. n .. '"}')
end
