"""The official OpenAI Python SDK against the gateway in front of llama.cpp (argv[1]: the
gateway's base URL, argv[2]: an API key). Prints one JSON object per line:

- {"case": ..., ...} for each call, with what the test checks;
- last, {"total": {"prompt_tokens": N, "completion_tokens": M}}: the usage llama.cpp reported
  over every call, for the tenant's counters.
Exits non-zero when the SDK raises.
"""
import json
import sys
import time

import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
messages = [{"role": "user", "content": "Count from one to twenty in words."}]
total = {"prompt_tokens": 0, "completion_tokens": 0}


def add(usage):
    total["prompt_tokens"] += usage.prompt_tokens
    total["completion_tokens"] += usage.completion_tokens


def out(**fields):
    print(json.dumps(fields), flush=True)


r = client.chat.completions.create(model="gemma", messages=messages, max_tokens=8, temperature=0)
add(r.usage)
out(case="chat", content=r.choices[0].message.content, model=r.model,
    completion_tokens=r.usage.completion_tokens)

for include_usage in (True, False):
    started = time.monotonic()
    arrivals, usage, pieces = [], None, []
    stream = client.chat.completions.create(
        model="gemma", messages=messages, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True} if include_usage else None,
    )
    for chunk in stream:
        arrivals.append(time.monotonic() - started)
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    if usage is not None:
        add(usage)
    out(case="chat_stream", include_usage=include_usage, usage=usage is not None,
        chunks=len(arrivals), pieces=len(pieces),
        spread_ms=round((arrivals[-1] - arrivals[0]) * 1000),
        completion_tokens=usage.completion_tokens if usage else None)

r = client.completions.create(model="gemma", prompt="The capital of France is", max_tokens=6,
                              temperature=0)
add(r.usage)
out(case="completion", text=r.choices[0].text, completion_tokens=r.usage.completion_tokens)

usage, chunks = None, 0
for chunk in client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=12,
                                       temperature=0, stream=True):
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage
add(usage)
out(case="completion_stream", chunks=chunks, completion_tokens=usage.completion_tokens)

out(total=total)
