"""openai-python, unmodified: chained store=false turns over client.responses.connect()."""
import sys

from openai import OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key)
with client.responses.connect() as conn:
    # A warm-up, as Codex does, then three turns chained by previous_response_id.
    conn.response.create(model="gpt-5", input=[], store=False, generate=False)
    prev = None
    for event in conn:
        if event.type == "response.completed":
            prev = event.response.id
            break
        if event.type == "error":
            sys.exit(f"warm-up failed: {event}")
    for i in range(3):
        conn.response.create(model="gpt-5", input=f"turn {i}", store=False, previous_response_id=prev)
        text = ""
        for event in conn:
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.completed":
                assert event.response.usage.output_tokens > 0
                prev = event.response.id
                break
            elif event.type == "error":
                sys.exit(f"turn {i} failed: {event}")
        assert text, "no text streamed"
        print(f"python ws turn {i}: {prev} ({len(text)} chars)")
