// Checks the gateway's OpenAI API with the official `openai` JS SDK (from npm, as browser and
// Node dApps use it): a completion, a streamed chat, and an error's status, param and code.
// usage: node openai_conformance.cjs BASE_URL MODEL GREEDY_TEXT
const assert = require("node:assert/strict");
const OpenAI = require("openai");

const [baseURL, model, greedyText] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });

async function main() {
  const completion = await client.completions.create({
    model, prompt: "once upon a time", max_tokens: 16, temperature: 0,
  });
  assert.equal(completion.choices[0].text, greedyText);
  console.log("ok: a greedy completion equals the model run whole");

  const messages = [{ role: "user", content: "hello there" }];
  const whole = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 0,
  });
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: 12, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(usage, null, "the usage chunk is the last");
    if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
    else usage = chunk.usage;
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.deepEqual(usage, whole.usage);
  console.log("ok: a streamed chat equals the whole answer, its usage last");

  try {
    await client.completions.create({ model: "no-such-model", prompt: "x", max_tokens: 1 });
    assert.fail("an unknown model was accepted");
  } catch (e) {
    assert.ok(e instanceof OpenAI.NotFoundError, String(e));
    assert.equal(e.status, 404);
    assert.equal(e.param, "model");
    assert.equal(e.code, "model_not_found");
  }
  try {
    await client.completions.create({ model, prompt: "x", max_tokens: 1, suffix: "y" });
    assert.fail("suffix was accepted");
  } catch (e) {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    assert.equal(e.param, "suffix");
  }
  console.log("ok: errors carry status, param and code");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
