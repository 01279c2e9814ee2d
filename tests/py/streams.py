"""Streams completions (or chats) through an OpenAI-compatible API from many threads at once,
with the official `openai` SDK, and prints one JSON list: each request's text and timing, and
the 429s it got. With --retry, a 429 is retried after its Retry-After (not the SDK's own
retries); without, the 429 is the request's outcome.

usage: streams.py BASE_URL MODEL API_KEY MAX_TOKENS [--chat] [--retry] PROMPT...
"""
import argparse
import json
import threading
import time

import openai

parser = argparse.ArgumentParser()
parser.add_argument("base_url")
parser.add_argument("model")
parser.add_argument("api_key")
parser.add_argument("max_tokens", type=int)
parser.add_argument("--chat", action="store_true")
parser.add_argument("--retry", action="store_true")
parser.add_argument("prompts", nargs="+")
args = parser.parse_args()
client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=300)
start = threading.Barrier(len(args.prompts))
results = [None] * len(args.prompts)


def stream(prompt):
    common = dict(model=args.model, max_tokens=args.max_tokens, temperature=0, stream=True)
    if args.chat:
        chunks = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        return (c.choices[0].delta.content or "" for c in chunks if c.choices)
    return (c.choices[0].text for c in client.completions.create(prompt=prompt, **common) if c.choices)


def run(i):
    start.wait()
    rejected, retry_after = 0, []
    while True:
        try:
            began = time.monotonic()
            text, first, last = "", None, None
            for delta in stream(args.prompts[i]):
                if delta:
                    last = time.monotonic()
                    first = first or last
                text += delta
            results[i] = {"text": text, "began": began, "first": first, "last": last, "rejected": rejected,
                          "retry_after": retry_after}
            return
        except openai.RateLimitError as e:
            rejected += 1
            retry_after.append(e.response.headers.get("retry-after"))
            if not args.retry:
                results[i] = {"rejected": rejected, "retry_after": retry_after}
                return
            time.sleep(float(e.response.headers.get("retry-after") or 1))
        except Exception as e:  # reported, so the test says what failed
            results[i] = {"error": repr(e)}
            return


threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args.prompts))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
