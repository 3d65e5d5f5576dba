"""openai-python, unmodified: POST /v1/responses streaming (SSE) and non-streaming (JSON)."""
import sys

from openai import OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)

# stream=True: server-sent events, one typed event each.
text, completed = "", None
with client.responses.create(model="gpt-5", input="stream please", stream=True) as stream:
    for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            completed = event.response
        elif event.type == "error":
            sys.exit(f"stream failed: {event}")
assert completed is not None, "no response.completed"
assert text, "no text streamed"
assert completed.usage.output_tokens > 0
print(f"python sse: {completed.id} ({len(text)} chars)")

# stream absent: the final response object as JSON, chained to the previous one.
resp = client.responses.create(model="gpt-5", input="whole please", previous_response_id=completed.id)
assert resp.status == "completed", resp
assert resp.output_text, "no output text"
assert resp.usage.output_tokens > 0
print(f"python json: {resp.id} ({len(resp.output_text)} chars)")

# A bad key is refused with 401, as the SDK expects.
try:
    OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).responses.create(model="gpt-5", input="x")
    sys.exit("a wrong key was accepted")
except Exception as e:  # openai.AuthenticationError
    assert getattr(e, "status_code", None) == 401, e
print("python http: wrong key refused with 401")
