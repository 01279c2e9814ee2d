"""Checks the gateway's OpenAI API with the official `openai` SDK, as a dApp would use it: every
implemented parameter must show its effect, every refused one must be a 400 naming it. Prints
one `ok: ...` line per check and exits non-zero at the first failure.

usage: openai_conformance.py BASE_URL MODEL CONTEXT_LENGTH VOCAB_SIZE EOS_IDS
"""
import json
import math
import sys

import openai

BASE_URL, MODEL = sys.argv[1], sys.argv[2]
CONTEXT, VOCAB = int(sys.argv[3]), int(sys.argv[4])
EOS_IDS = [int(i) for i in sys.argv[5].split(",") if i]
client = openai.OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0, timeout=120)
PROMPT = "once upon a time"


def ok(what):
    print(f"ok: {what}", flush=True)


def complete(**kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("prompt", PROMPT)
    return client.completions.create(**kw)


def refused(call, param, status=400, code=None):
    """`call` must fail with `status`, naming `param` (and `code`) in the error."""
    try:
        call()
    except openai.APIStatusError as e:
        assert e.status_code == status, (param, e.status_code, e.body)
        assert isinstance(e.body, dict), e.body
        assert e.body.get("param") == param, (param, e.body)
        if code is not None:
            assert e.body.get("code") == code, (code, e.body)
        return e.body
    raise AssertionError(f"{param}: accepted")


def ids(completion):
    return completion.choices[0].model_extra["token_ids"]


greedy = complete(max_tokens=16, temperature=0, logprobs=5)
GREEDY_IDS = ids(greedy)
assert len(GREEDY_IDS) == 16, GREEDY_IDS

# --- sampling: random unless seeded -------------------------------------------------------------
seeded = [ids(complete(max_tokens=16, temperature=1, seed=11)) for _ in range(2)]
assert seeded[0] == seeded[1], seeded
unseeded = [tuple(ids(complete(max_tokens=16, temperature=1))) for _ in range(3)]
assert len(set(unseeded)) > 1, unseeded
ok("temperature 1: the same seed repeats, no seed gives different samples")

# --- n: choices equal single runs seeded s, s+1, s+2 --------------------------------------------
three = complete(max_tokens=12, temperature=1, seed=40, n=3, best_of=3)
assert [c.index for c in three.choices] == [0, 1, 2], three.choices
singles = [ids(complete(max_tokens=12, temperature=1, seed=40 + i)) for i in range(3)]
assert [c.model_extra["token_ids"] for c in three.choices] == singles, (three.choices, singles)
assert len({tuple(s) for s in singles}) > 1, singles
assert three.usage.completion_tokens == sum(len(s) for s in singles)
assert ids(complete(max_tokens=12, temperature=1, seed=-3)) == ids(
    complete(max_tokens=12, temperature=1, seed=-3)), "a negative seed is a seed too"
assert three.usage.prompt_tokens == complete(max_tokens=1).usage.prompt_tokens
streamed = {}
for chunk in complete(max_tokens=12, temperature=1, seed=40, n=3, stream=True):
    for choice in chunk.choices:
        streamed.setdefault(choice.index, []).extend(choice.model_extra["token_ids"])
assert [streamed[i] for i in range(3)] == singles, streamed
chat_args = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                 temperature=1, seed=5)
chat_three = client.chat.completions.create(n=3, **chat_args)
assert [c.index for c in chat_three.choices] == [0, 1, 2]
chat_singles = [client.chat.completions.create(**{**chat_args, "seed": 5 + i})
                .choices[0].message.content for i in range(3)]
assert [c.message.content for c in chat_three.choices] == chat_singles, chat_singles
chat_streamed, roles = {}, {}
for chunk in client.chat.completions.create(n=3, stream=True, **chat_args):
    for choice in chunk.choices:
        roles.setdefault(choice.index, choice.delta.role)
        chat_streamed[choice.index] = chat_streamed.get(choice.index, "") + (
            choice.delta.content or "")
assert [chat_streamed[i] for i in range(3)] == chat_singles, chat_streamed
assert all(roles[i] == "assistant" for i in range(3)), roles
ok("n=3: three choices equal to single runs seeded s, s+1, s+2, streamed and not; usage counts "
   "the prompt once")

# --- prompt forms: a list of prompts, token ids, lists of token ids ------------------------------
P1, P2 = "in the beginning", "why"
both = complete(prompt=[P1, P2], max_tokens=6, temperature=1, seed=9, n=2)
assert [c.index for c in both.choices] == [0, 1, 2, 3], both.choices
for i, c in enumerate(both.choices):
    single = complete(prompt=[P1, P2][i // 2], max_tokens=6, temperature=1, seed=9 + i % 2)
    assert c.model_extra["token_ids"] == ids(single), (i, c, single)
prompt_tokens = [complete(prompt=p, max_tokens=1).usage.prompt_tokens for p in (P1, P2)]
assert both.usage.prompt_tokens == sum(prompt_tokens), (both.usage, prompt_tokens)
assert both.usage.completion_tokens == sum(len(c.model_extra["token_ids"]) for c in both.choices)
as_ids = [[int(t.removeprefix("token_id:")) for t in complete(
    prompt=p, max_tokens=1, echo=True, logprobs=0,
    extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs.tokens[:-1]]
    for p in (P1, P2)]
greedy_texts = complete(prompt=[P1, P2], max_tokens=6, temperature=0)
greedy_ids = complete(prompt=as_ids, max_tokens=6, temperature=0)
assert [ids for ids in map(lambda c: c.model_extra["token_ids"], greedy_ids.choices)] == [
    c.model_extra["token_ids"] for c in greedy_texts.choices]
assert ids(complete(prompt=as_ids[0], max_tokens=6, temperature=0)) == \
    greedy_texts.choices[0].model_extra["token_ids"]
refused(lambda: complete(prompt=[1, VOCAB], max_tokens=1), "prompt")
refused(lambda: complete(prompt=[P1, P2, P1], max_tokens=1, n=3), "prompt")
ok("prompts: [p1, p2] with n=2 gives 4 choices (index = prompt*n + j) equal to single runs, "
   "usage counts each prompt once; token ids and lists of them equal the text prompts; an id "
   "outside the vocabulary is a 400")

# --- logit_bias ---------------------------------------------------------------------------------
first = GREEDY_IDS[0]
barred = complete(max_tokens=1, temperature=0, logprobs=5, logit_bias={str(first): -100})
runner_up = sorted(greedy.choices[0].logprobs.top_logprobs[0].items(), key=lambda kv: -kv[1])[1]
assert ids(barred)[0] != first, (first, ids(barred))
assert math.isclose(barred.choices[0].logprobs.token_logprobs[0], runner_up[1], abs_tol=1e-4), (
    barred.choices[0].logprobs.token_logprobs[0], runner_up)
forced = (first + 7) % VOCAB
assert ids(complete(max_tokens=6, temperature=0, logit_bias={str(forced): 100})) == [forced] * 6
for bias in ({str(VOCAB): 1}, {"-1": 1}, {"01": 1}, {"x": 1}, {str(first): 500}):
    refused(lambda: complete(max_tokens=1, logit_bias=bias), "logit_bias")
ok(f"logit_bias: -100 on {first} picks the runner-up (same logprob), +100 forces {forced}, "
   "bad ids and values are 400s")

# --- echo: the prompt before the completion, with the prompt's log-probabilities ----------------
prompt_ids = complete(max_tokens=1, echo=True, logprobs=0, extra_body={
    "return_tokens_as_token_ids": True}).choices[0].logprobs.tokens[:-1]
prompt_ids = [int(t.removeprefix("token_id:")) for t in prompt_ids]
echoed = complete(prompt=prompt_ids + GREEDY_IDS[:8], max_tokens=2, temperature=0, echo=True,
                  logprobs=3)
lp = echoed.choices[0].logprobs
n_prompt = len(prompt_ids) + 8
assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp.token_logprobs[:2]
assert len(lp.token_logprobs) == n_prompt + 2, (len(lp.token_logprobs), n_prompt)
generated = greedy.choices[0].logprobs.token_logprobs[:8]
assert all(math.isclose(a, b, abs_tol=1e-3)
           for a, b in zip(lp.token_logprobs[len(prompt_ids):n_prompt], generated)), (
    lp.token_logprobs[len(prompt_ids):n_prompt], generated)
whole = complete(max_tokens=3, temperature=0, echo=True)
assert whole.choices[0].text.startswith(PROMPT), whole.choices[0].text
assert whole.choices[0].text[len(PROMPT):] == complete(max_tokens=3, temperature=0).choices[0].text
scored = complete(max_tokens=2, temperature=0, echo=True, logprobs=0)
offsets = scored.choices[0].logprobs.text_offset
n_text_prompt = len(scored.choices[0].logprobs.tokens) - 2
assert offsets == sorted(offsets) and offsets[n_text_prompt] == len(PROMPT), (offsets, PROMPT)
only_prompt = complete(max_tokens=0, echo=True, logprobs=1)
assert only_prompt.choices[0].text == PROMPT, only_prompt.choices[0].text
assert len(only_prompt.choices[0].logprobs.token_logprobs) == n_text_prompt
assert only_prompt.usage.completion_tokens == 0
ok("echo: the prompt comes back before the completion; the echoed log-probabilities of 8 greedy "
   "tokens equal those from generating them")

# --- presence and frequency penalties, checked against OpenAI's formula -------------------------
REPEATS = "the the the the the the the the the"
plain = ids(complete(prompt=REPEATS, max_tokens=32, temperature=0))
for presence, frequency in ((0, 1.5), (1.5, 0), (0.7, 0.8)):
    # vLLM's `return_tokens_as_token_ids` names each alternative by its id ("token_id:N"), so
    # every score is exact.
    run = complete(prompt=REPEATS, max_tokens=32, temperature=0, logprobs=20,
                   presence_penalty=presence, frequency_penalty=frequency,
                   extra_body={"return_tokens_as_token_ids": True})
    tokens, lp = ids(run), run.choices[0].logprobs
    assert lp.tokens == [f"token_id:{t}" for t in tokens], (lp.tokens, tokens)
    assert tokens != plain, (presence, frequency)
    counts, checked = {}, 0

    def score(token, logprob):
        c = counts.get(token, 0)
        return logprob - c * frequency - (presence if c > 0 else 0)

    for step, chosen in enumerate(tokens):
        chosen_score = score(chosen, lp.token_logprobs[step])
        alternatives = {int(k.removeprefix("token_id:")): v for k, v in lp.top_logprobs[step].items()}
        for token, logprob in alternatives.items():
            assert chosen_score >= score(token, logprob) - 1e-4, (step, chosen, token)
        # Tokens outside the top 20 score at most their logprob, below the 20th: the step is
        # fully checked when the chosen score is at least that.
        if chosen_score >= min(alternatives.values()):
            checked += 1
        counts[chosen] = counts.get(chosen, 0) + 1
    assert checked >= 10, (presence, frequency, checked)
for param in ("presence_penalty", "frequency_penalty"):
    refused(lambda: complete(max_tokens=1, **{param: 3}), param)
ok("penalties: (0, 1.5), (1.5, 0), (0.7, 0.8) change the output and agree with the formula; "
   "3 is refused")

# --- stop strings are withheld exactly, streamed and not ----------------------------------------
long = complete(max_tokens=40, temperature=0, logprobs=0)
LONG_TEXT = long.choices[0].text
# Where each token's text starts in the output, and where the output ends.
OFFSETS = long.choices[0].logprobs.text_offset + [len(LONG_TEXT)]


def piece(start, count):
    """The text that tokens start..start+count add to the output."""
    return LONG_TEXT[OFFSETS[start]:OFFSETS[start + count]]


def streamed_text(**kw):
    text = ""
    for chunk in complete(stream=True, **kw):
        text += chunk.choices[0].text
    return text


def stop_string(span):
    """A stop string made of `span` whole tokens from the middle of the output, each adding
    text, that does not occur earlier; one without U+FFFD (a partial character) if any."""
    candidates = []
    for start in range(8, 30):
        stop = piece(start, span)
        whole_tokens = all(piece(start + i, 1) for i in range(span))
        if stop.strip() and whole_tokens and LONG_TEXT.find(stop) == OFFSETS[start]:
            candidates.append(stop)
    assert candidates, f"no {span}-token stop string found"
    return next((s for s in candidates if "\ufffd" not in s), candidates[0])


# Stop strings that only start in the output: held back while they might complete, then sent.
last = piece(len(OFFSETS) - 2, 1)
assert last, "the last token adds no text"
mid = next(LONG_TEXT[OFFSETS[k] + 1:OFFSETS[k + 1] + 1] for k in range(8, 38)
           if OFFSETS[k + 1] - OFFSETS[k] >= 2 and LONG_TEXT.find(
               LONG_TEXT[OFFSETS[k] + 1:OFFSETS[k + 1] + 1]) == OFFSETS[k] + 1)
for stop, expected in ((last + "\x01", LONG_TEXT), (mid, LONG_TEXT[:LONG_TEXT.find(mid)])):
    whole = complete(max_tokens=40, temperature=0, stop=[stop]).choices[0]
    assert whole.text == expected, (stop, whole.text)
    assert streamed_text(max_tokens=40, temperature=0, stop=[stop]) == expected, stop
ok(f"a stop string never completed ({last!r} + '\\x01') is sent at the finish; one starting "
   f"mid-token ({mid!r}) cuts there, streamed and not")

for span in (1, 2, 3):
    stop = stop_string(span)
    cut = LONG_TEXT.find(stop)
    whole = complete(max_tokens=40, temperature=0, stop=[stop])
    assert whole.choices[0].text == LONG_TEXT[:cut], (span, stop, whole.choices[0].text)
    assert whole.choices[0].finish_reason == "stop"
    assert streamed_text(max_tokens=40, temperature=0, stop=[stop]) == LONG_TEXT[:cut], (span, stop)
    ok(f"a stop string of {span} tokens ({stop!r}) is withheld, streamed and not")

# --- streaming: usage chunk, logprobs -----------------------------------------------------------
chunks = list(complete(max_tokens=10, temperature=0, stream=True, logprobs=2,
                       stream_options={"include_usage": True}))
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10, chunks[-1]
assert all(c.usage is None for c in chunks[:-1])
streamed_lp = [lp for c in chunks[:-1] if c.choices and c.choices[0].logprobs
               for lp in c.choices[0].logprobs.token_logprobs]
whole_lp = complete(max_tokens=10, temperature=0, logprobs=2).choices[0].logprobs.token_logprobs
assert len(streamed_lp) == 10 and all(math.isclose(a, b, abs_tol=1e-6)
                                      for a, b in zip(streamed_lp, whole_lp)), (streamed_lp, whole_lp)
refused(lambda: complete(max_tokens=1, stream_options={"include_usage": True}), "stream_options")
ok("stream_options.include_usage ends with the usage chunk; streamed logprobs equal the whole "
   "answer's")

# --- refused parameters and bad values ----------------------------------------------------------
refused(lambda: complete(max_tokens=1, suffix="x"), "suffix")
refused(lambda: complete(max_tokens=1, n=0), "n")
refused(lambda: complete(max_tokens=1, n=9), "n")
refused(lambda: complete(max_tokens=1, best_of=2), "best_of")
refused(lambda: list(complete(max_tokens=1, echo=True, stream=True)), "echo")
refused(lambda: complete(max_tokens=1, extra_body={"frobnicate": 1}), "frobnicate")
chat = dict(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
refused(lambda: client.chat.completions.create(**chat, tools=[tool]), "tools")
refused(lambda: client.chat.completions.create(**chat, tool_choice="required"), "tool_choice")
for kind in ("json_object", "bogus"):
    refused(lambda: client.chat.completions.create(**chat, response_format={"type": kind}),
            "response_format")
refused(lambda: client.chat.completions.create(**chat, top_logprobs=2), "top_logprobs")
refused(lambda: client.chat.completions.create(**chat, logprobs=True, top_logprobs=21),
        "top_logprobs")
refused(lambda: complete(max_tokens=1, logprobs=21), "logprobs")
refused(lambda: complete(max_tokens=1, stop=["a", "b", "c", "d", "e"]), "stop")
refused(lambda: complete(max_tokens=1, stop=["x" * 257]), "stop")
refused(lambda: complete(max_tokens=1, temperature=3), "temperature")
refused(lambda: complete(max_tokens=1, top_p=0), "top_p")
refused(lambda: complete(prompt=["a"] * 9, max_tokens=1), "prompt")
refused(lambda: complete(max_tokens=1, echo=True, logprobs=1, prompt="a " * 1100), "echo")
refused(lambda: client.embeddings.create(model=MODEL, input="x"), "model")
for bad in (0, -1, 2**64 - 1, CONTEXT):
    refused(lambda: complete(max_tokens=bad), "max_tokens")
    refused(lambda: list(complete(max_tokens=bad, stream=True)), "max_tokens")
refused(lambda: list(complete(prompt="a " * (CONTEXT + 10), max_tokens=4, stream=True)),
        "prompt", code="context_length_exceeded")
refused(lambda: complete(model="no-such-model", max_tokens=1), "model", status=404,
        code="model_not_found")
ok("suffix, n of 0 or 9, best_of other than n, echo, unknown fields, tools, tool_choice, response_format and "
   "top_logprobs without logprobs are 400s naming the parameter; max_tokens of 0, -1, 2^64-1 "
   "and the context length are 400s, streamed or not; a too-long streamed prompt is a 400 with "
   "context_length_exceeded; an unknown model is a 404 with model_not_found")

# --- chat inputs --------------------------------------------------------------------------------
def chat_text(messages, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                          temperature=0, **kw).choices[0].message.content


as_string = chat_text([{"role": "user", "content": "hello there"}])
as_parts = chat_text([{"role": "user", "content": [{"type": "text", "text": "hello"},
                                                   {"type": "text", "text": "there"}]}])
# Parts are joined by newlines, as vLLM joins them.
assert as_parts == chat_text([{"role": "user", "content": "hello\nthere"}]), as_parts
assert as_string == chat_text([{"role": "user", "content": [{"type": "text",
                                                             "text": "hello there"}]}])
chat_text([{"role": "user", "content": "weather?"},
           {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "weather", "arguments": "{}"}}]},
           {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
refused(lambda: chat_text([{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), "messages")
ok("chat: content parts equal their text joined by newlines; a null assistant content with tool_calls and a tool "
   "turn are accepted; an image part is a 400 naming messages")

# --- chat without max_tokens runs to the end of the context -------------------------------------
def chat_prompt_tokens(content):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=1,
        temperature=0).usage.prompt_tokens


words = CONTEXT - 100
room = CONTEXT - chat_prompt_tokens("a " * words)
words += room - 50  # "a " is one token: leave about 50
room = CONTEXT - chat_prompt_tokens("a " * words)
assert 10 <= room <= 100, room
no_eos = {str(i): -100 for i in EOS_IDS}
open_ended = client.chat.completions.create(
    model=MODEL, messages=[{"role": "user", "content": "a " * words}], temperature=0,
    logit_bias=no_eos)
assert open_ended.usage.completion_tokens == room, (open_ended.usage, room)
assert open_ended.choices[0].finish_reason == "length"
ok(f"chat without max_tokens ran to the context limit: {room} tokens left, all generated")

# --- models -------------------------------------------------------------------------------------
listed = client.models.list().data
assert [m.id for m in listed] == [MODEL] and listed[0].created > 1_700_000_000, listed
assert client.models.retrieve(MODEL).id == MODEL
refused(lambda: client.models.retrieve("no-such-model"), "model", status=404,
        code="model_not_found")
ok("models: listed with a creation time, retrievable by id, 404 model_not_found otherwise")
print(json.dumps({"greedy_ids": GREEDY_IDS}))
