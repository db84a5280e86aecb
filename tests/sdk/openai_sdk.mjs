// openai_sdk.mjs - the official OpenAI Node.js SDK as a real client of aigw.
// Env: AIGW_BASE_URL (http://127.0.0.1:PORT/v1), AIGW_API_KEY, AIGW_LIMITED_KEY
// (a credential whose tenant allows 1 request per minute, already used up),
// AIGW_QUOTA_KEY (one whose tenant has spent its monthly quota).
// Prints one line per check ("ok ..." / "not ok ...") and exits non-zero on
// any failure; test_sdk.c runs it and checks both.
import OpenAI from "openai";

let failed = 0;
function check(cond, what) {
  console.log(`${cond ? "ok" : "not ok"} - ${what}`);
  if (!cond) failed++;
}

const client = new OpenAI({ baseURL: process.env.AIGW_BASE_URL, apiKey: process.env.AIGW_API_KEY, maxRetries: 0 });

// non-streaming
const c = await client.chat.completions.create({
  messages: [{ role: "user", content: "Which lens coating reduces glare?" }],
  temperature: 0,
});
check(c.object === "chat.completion", "completion object");
check(typeof c.choices[0].message.content === "string" &&
      c.choices[0].message.content.includes("Mock answer to [Which lens coating reduces glare?]"), "answer text");
check(c.usage && c.usage.completion_tokens > 0, "usage reported");

// streaming
const stream = await client.chat.completions.create({
  messages: [{ role: "user", content: "Stream the answer" }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "", chunks = 0, usage = null;
for await (const chunk of stream) {
  chunks++;
  if (chunk.choices.length > 0 && chunk.choices[0].delta.content) text += chunk.choices[0].delta.content;
  if (chunk.usage) usage = chunk.usage;
}
check(chunks > 3, `stream delivered ${chunks} chunks`);
check(text.startsWith("Mock answer to [Stream the answer]") && text.includes("tok"), "stream text assembled");
check(usage && usage.completion_tokens > 0, "stream usage chunk");

// the stream helper the SDK offers on top
const runner = client.chat.completions.stream({ messages: [{ role: "user", content: "Helper stream" }] });
const final = await runner.finalChatCompletion();
check(final.choices[0].message.content.startsWith("Mock answer to [Helper stream]"), "stream helper final message");

// models
const models = await client.models.list();
const ids = [];
for await (const m of models) ids.push(m.id);
check(ids.length >= 1, `models listed: ${ids.join(",")}`);

// a typed error: 429 surfaces as RateLimitError
const limited = new OpenAI({ baseURL: process.env.AIGW_BASE_URL, apiKey: process.env.AIGW_LIMITED_KEY, maxRetries: 0 });
try {
  await limited.chat.completions.create({ messages: [{ role: "user", content: "one too many" }] });
  check(false, "429 raised");
} catch (e) {
  check(e instanceof OpenAI.RateLimitError, `RateLimitError (${e.constructor.name})`);
  check(e.status === 429, "status 429");
  check(e.error && typeof e.error.message === "string" && e.error.type === "rate_limit_error", "OpenAI error body");
}

// the monthly quota spent: a 429 the SDK does not retry (x-should-retry:
// false), though it retries every other 429; test_sdk.c counts the requests
const spent = new OpenAI({ baseURL: process.env.AIGW_BASE_URL, apiKey: process.env.AIGW_QUOTA_KEY, maxRetries: 2 });
try {
  await spent.chat.completions.create({ messages: [{ role: "user", content: "over the quota" }] });
  check(false, "quota 429 raised");
} catch (e) {
  check(e instanceof OpenAI.RateLimitError && e.code === "quota_exhausted",
        `quota_exhausted raised as RateLimitError (${e.constructor.name} ${e.code})`);
}

// a typed error: bad request
try {
  await client.chat.completions.create({ messages: [{ role: "wizard", content: "x" }] });
  check(false, "400 raised");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.param === "messages[0].role", `BadRequestError on messages[0].role`);
}

console.log(failed === 0 ? "ALL OK" : `${failed} FAILED`);
process.exit(failed === 0 ? 0 : 1);
