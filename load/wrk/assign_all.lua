-- POST /v1/assignments with a fresh unit id per request: every answer
-- logs exposures and makes first exposures (issue 14's assign-all target).
-- With the script argument `no-exposure` the requests ask for no exposure
-- logging, to measure what logging costs.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  n = 0
  tail = (args[1] == "no-exposure") and '","log_exposure":false}' or '"}'
  wrk.method = "POST"
  wrk.path = "/v1/assignments"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"unit_id":"u' .. tid .. '-' .. n .. tail)
end
