"""`quill serve` through the official `openai` Python client.

    python3 -m venv /tmp/serve-venv && /tmp/serve-venv/bin/pip install openai
    quill serve &
    /tmp/serve-venv/bin/python scripts/serve_openai_demo.py --base-url http://127.0.0.1:8080/v1

Lists the models, asks for two completions at once (n=2, a stop string), streams one
(with the top_k extension and a usage chunk), and shows a bad request's error naming the
field. Exits non-zero if anything is not as expected. The benchmark runs it too
(`cargo bench --bench serve -- CHECKPOINT --openai-python /tmp/serve-venv/bin/python`).
"""

import argparse
import sys

import openai
from openai import OpenAI


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    p.add_argument("--model", default=None, help="default: the first the server lists")
    a = p.parse_args()

    client = OpenAI(base_url=a.base_url, api_key="not-needed", max_retries=0)
    models = [m.id for m in client.models.list().data]
    model = a.model or models[0]
    print(f"openai {openai.__version__}; models: {', '.join(models)}")

    r = client.completions.create(
        model=model, prompt="ROMEO:", max_tokens=80, temperature=0.8, seed=3, n=2, stop=["\n\n"]
    )
    for c in r.choices:
        print(f"--- choice {c.index} (finish_reason {c.finish_reason}):\nROMEO:{c.text}")
    print(f"usage: {r.usage}")
    assert len(r.choices) == 2 and r.usage.completion_tokens > 0

    print("--- streamed:")
    sys.stdout.write("JULIET:")
    pieces = 0
    usage = None
    for chunk in client.completions.create(
        model=model,
        prompt="JULIET:",
        max_tokens=120,
        temperature=0.8,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"top_k": 40},
    ):
        for c in chunk.choices:
            sys.stdout.write(c.text)
            pieces += bool(c.text)
        if chunk.usage:
            usage = chunk.usage
    sys.stdout.write("\n")
    print(f"{pieces} streamed pieces; usage: {usage}")
    assert usage is not None and usage.completion_tokens == 120

    try:
        client.completions.create(model=model, prompt="x", max_tokens=0)
    except openai.BadRequestError as e:
        print(f"a bad request: HTTP {e.status_code}, param {e.body.get('param')!r}: {e.message}")
        assert e.body.get("param") == "max_tokens"
    else:
        raise AssertionError("max_tokens=0 was accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
