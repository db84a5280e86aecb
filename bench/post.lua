-- wrk script: POST a JSON question with a bearer token.
-- env: AIGW_BENCH_TOKEN, AIGW_BENCH_UNIQUE=1 for a distinct question per request,
--      AIGW_BENCH_DIRECT=1 to send the OpenAI chat body straight to a model server.
local token = os.getenv("AIGW_BENCH_TOKEN") or ""
local unique = os.getenv("AIGW_BENCH_UNIQUE") == "1"
local direct = os.getenv("AIGW_BENCH_DIRECT") == "1"
local nonce = os.getenv("AIGW_BENCH_NONCE") or tostring(os.time())
local counter = 0
threads = 0

-- runs in the main Lua state: give each thread its own id (a global there)
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
end

function request()
  counter = counter + 1
  local q = "How do I clean anti-reflective lenses?"
  if unique then q = string.format("bench question %s-%d-%d", nonce, tid or 0, counter) end
  local body
  if direct then
    body = string.format('{"model":"default","messages":[{"role":"system","content":"You are the AI assistant."},{"role":"user","content":"%s"}],"max_tokens":1000,"stream":false}', q)
  else
    body = string.format('{"question":"%s"}', q)
  end
  return wrk.format(nil, nil, nil, body)
end
