"""The official OpenAI SDK over TLS: chat and completions, streamed and not, against BASE_URL
(https://...), trusting only the CA in SSL_CERT_FILE. Prints one line per call."""
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "hello over tls"}]

r = client.chat.completions.create(model="m", messages=messages, max_tokens=4)
print("chat", r.choices[0].finish_reason, r.usage.completion_tokens)

pieces = 0
finish = None
for chunk in client.chat.completions.create(model="m", messages=messages, max_tokens=4, stream=True):
    if chunk.choices:
        pieces += 1
        finish = chunk.choices[0].finish_reason or finish
print("chat-stream", finish, pieces)

r = client.completions.create(model="m", prompt="hello", max_tokens=3)
print("completion", r.choices[0].finish_reason, r.usage.completion_tokens)
