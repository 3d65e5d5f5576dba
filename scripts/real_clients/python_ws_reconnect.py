"""openai-python, unmodified: a store=false tool-call round trip over client.responses.connect(),
then new WebSocket connections that continue the chain by previous_response_id (as Codex does
after an interrupt). Every response must come from the same upstream connection (the mock's
response ids name it: resp_c<conn>t<turn>_...), whichever gateway shard accepted the client."""
import sys

from openai import OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key)


def turn(conn, **kwargs):
    conn.response.create(model="gpt-5", store=False, **kwargs)
    for event in conn:
        if event.type == "response.completed":
            return event.response
        if event.type == "error":
            sys.exit(f"turn failed: {event}")
    sys.exit("connection ended mid-turn")


def upstream_conn(response_id):
    return response_id.split("t", 1)[0]


with client.responses.connect() as conn:
    first = turn(conn, input="run it [[mock:tool=exec_command]]")
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, f"no function call in {first.output}"
    answered = turn(
        conn,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "mock"}],
        previous_response_id=first.id,
    )
prev = answered.id
owner = upstream_conn(first.id)
assert upstream_conn(prev) == owner, (first.id, prev)
for i in range(6):
    with client.responses.connect() as conn:
        prev = turn(conn, input=f"after reconnect {i}", previous_response_id=prev).id
    assert upstream_conn(prev) == owner, f"reconnect {i} left upstream connection {owner}: {prev}"
    print(f"python ws reconnect {i}: {prev}")
