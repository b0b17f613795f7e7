"""The official OpenAI Python SDK against the gateway (argv[1] is its base URL).

1. A complete stream is read to its end without an error.
2. A stream the upstream cuts after a few tokens must raise, not look complete.
Prints one line per case; exits non-zero if the SDK returned a truncated stream as complete.
"""
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "tell me a story"}]

stream = client.chat.completions.create(model="m", messages=messages, stream=True, max_tokens=5)
pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
print("complete", len(pieces))

try:
    stream = client.chat.completions.create(
        model="m",
        messages=messages,
        stream=True,
        max_tokens=50,
        extra_headers={"x-sim-fault": "die_after=3"},
    )
    got = sum(1 for _ in stream)
except openai.APIError as e:
    print("raised", type(e).__name__, getattr(e, "code", None) or e.body.get("code"))
    sys.exit(0)
print("truncated stream returned as complete after", got, "chunks")
sys.exit(1)
