"""openai-python's Realtime client, unmodified, through the gateway: a text turn, then an audio
turn (input audio appended and committed, audio out with its transcript).

Usage: python_realtime.py BASE_URL KEY
"""

import base64
import sys

from openai import OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key)


def until_done(conn, wanted):
    """Reads events up to response.done; returns (text of `wanted` deltas, audio bytes)."""
    text, audio = [], 0
    for event in conn:
        if event.type == "error":
            raise SystemExit(f"error event: {event.error}")
        if event.type == wanted:
            text.append(event.delta)
        if event.type in ("response.output_audio.delta", "response.audio.delta"):
            audio += len(base64.b64decode(event.delta))
        if event.type == "response.done":
            return "".join(text), audio, event.response
    raise SystemExit("connection ended before response.done")


with client.realtime.connect(model="gpt-realtime") as conn:
    first = conn.recv()
    assert first.type == "session.created", first.type
    conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "instructions": "be brief"})
    conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
    )
    conn.response.create()
    text, _, response = until_done(conn, "response.output_text.delta")
    assert "lorem" in text, text
    assert response.usage is not None and response.usage.output_tokens > 0, response.usage
    print(f"text turn: {text!r}, usage {response.usage.total_tokens} tokens")

    pcm = bytes(48_000)  # one second of 24 kHz PCM16 silence
    for i in range(0, len(pcm), 12_000):
        conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 12_000]).decode())
    conn.input_audio_buffer.commit()
    conn.response.create(response={"output_modalities": ["audio"]})
    transcript, audio, response = until_done(conn, "response.output_audio_transcript.delta")
    assert audio > 0 and transcript, (audio, transcript)
    assert response.usage.input_token_details.audio_tokens > 0, response.usage
    print(f"audio turn: {audio} bytes of audio, transcript {transcript!r}")
