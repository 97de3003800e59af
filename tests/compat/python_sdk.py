"""One case of the compatibility suite, run with the official Python SDK (`anthropic`) as a user would.

Usage: python_sdk.py CASE, with SIDECRED_BASE_URL (the client's base URL) and SIDECRED_API_KEY set.
Prints one line of JSON with what the client got; an exception ends it with a traceback and exit 1.
tests/tests/compat_python.rs runs each case against the real forwarder and a fake API and checks both
what the client got and what the API received.
"""

import asyncio
import json
import os
import sys
import time

import anthropic

BASE_URL = os.environ["SIDECRED_BASE_URL"]
API_KEY = os.environ["SIDECRED_API_KEY"]
MODEL = "claude-sonnet-4-5"


def client(**options):
    return anthropic.Anthropic(base_url=BASE_URL, api_key=API_KEY, **options)


def ask(text="Hello"):
    return [{"role": "user", "content": text}]


def create():
    message = client().messages.create(model=MODEL, max_tokens=64, messages=ask())
    return {"text": message.content[0].text, "stop_reason": message.stop_reason, "model": message.model}


def stream():
    with client().messages.stream(model=MODEL, max_tokens=64, messages=ask()) as events:
        pieces = list(events.text_stream)
        final = events.get_final_message()
    return {"pieces": pieces, "text": final.content[0].text, "stop_reason": final.stop_reason}


def concurrent_streams():
    count = int(os.environ.get("SIDECRED_STREAMS", "20"))

    async def one(api, i):
        async with api.messages.stream(model=MODEL, max_tokens=64, messages=ask(f"stream {i}")) as events:
            return "".join([piece async for piece in events.text_stream])

    async def main():
        api = anthropic.AsyncAnthropic(base_url=BASE_URL, api_key=API_KEY)
        started = time.monotonic()
        texts = await asyncio.gather(*(one(api, i) for i in range(count)))
        return {"texts": texts, "seconds": time.monotonic() - started}

    return asyncio.run(main())


def count_tokens():
    counted = client().messages.count_tokens(model=MODEL, messages=ask())
    return {"input_tokens": counted.input_tokens}


def models():
    api = client()
    ids = [model.id for model in api.models.list()]
    return {"ids": ids, "retrieved": api.models.retrieve(ids[-1]).id}


def betas():
    message = client().beta.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=ask(),
        betas=["interleaved-thinking-2025-05-14", "context-management-2025-06-27"],
    )
    return {"text": message.content[0].text}


def cancel():
    with client().messages.stream(model=MODEL, max_tokens=64, messages=ask()) as events:
        for piece in events.text_stream:
            first = piece
            break
    # Leaving the block closed the response in the middle of the stream.
    return {"first": first}


def large_prompt():
    """A request whose body is larger than the forwarder keeps for its own retry (--retry-body-limit)."""
    size = int(os.environ.get("SIDECRED_PROMPT_BYTES", "4096"))
    message = client().messages.create(model=MODEL, max_tokens=64, messages=ask("x" * size))
    return {"text": message.content[0].text}


def wrong_key():
    started = time.monotonic()
    try:
        client().messages.create(model=MODEL, max_tokens=64, messages=ask())
    except anthropic.AuthenticationError as e:
        return {
            "error": type(e).__name__,
            "status": e.status_code,
            "should_retry": e.response.headers.get("x-should-retry"),
            "message": str(e),
            "seconds": time.monotonic() - started,
        }
    raise SystemExit("the request succeeded with a wrong key")


def refused():
    """A request the forwarder or the API refuses: what the SDK raises, and how soon."""
    started = time.monotonic()
    try:
        client().messages.create(model=MODEL, max_tokens=64, messages=ask())
    except anthropic.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {
            "error": type(e).__name__,
            "status": e.status_code,
            "type": (body.get("error") or {}).get("type"),
            "should_retry": e.response.headers.get("x-should-retry"),
            "retry_after": e.response.headers.get("retry-after"),
            "message": str(e),
            "seconds": time.monotonic() - started,
        }
    raise SystemExit("the request was served")


CASES = {f.__name__: f for f in (create, stream, concurrent_streams, count_tokens, models, betas, cancel, large_prompt, wrong_key, refused)}

if __name__ == "__main__":
    print(json.dumps(CASES[sys.argv[1]]()), flush=True)
