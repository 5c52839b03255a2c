"""The embedded model keeps its KV cache between calls: an agent's calls that
share a prompt prefix (the system prompt, a growing conversation) evaluate
only what is new, and the answers are token for token those of the same
model evaluating every prompt in full (greedy). Usage reports the reused
part as OpenAI does (`prompt_tokens_details.cached_tokens`). Calls at once
decode together and answer as each does alone."""
import os
import tempfile

import openai
import pytest

from conftest import REPO, run_cluster

MODEL, FRESH = "smollm2-135m-instruct", "smollm2-fresh"
SYSTEM = ("You are a careful assistant for a travel agency. Answer in one short sentence. "
          "Never invent prices. Prefer trains to planes under 600 km. ") * 6


@pytest.fixture(scope="module")
def client():
    """A free cluster serving the default model twice: with prefix reuse
    (as configured) and, as `smollm2-fresh`, without."""
    with open(os.path.join(REPO, "config/models.toml")) as f:
        models = f.read()
    engine = next(line for line in models.splitlines() if line.startswith('engine = { kind = "local"'))
    fresh = engine.rstrip().removesuffix("}").rstrip() + ", reuse_prompt_prefix = false }"
    models += f'\n[[models]]\nid = "{FRESH}"\ndefault_max_tokens = 256\n{fresh}\n'
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "models.toml")
        with open(path, "w") as f:
            f.write(models)
        for cluster in run_cluster("--free", "--models-file", path):
            yield openai.OpenAI(base_url=cluster.edge_url + "/v1", api_key="unused", max_retries=0)


def ask(client, model, messages):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)


def test_an_agents_calls_reuse_the_prefix_and_answer_exactly_as_without(client):
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Paris to Lyon?"}]
    calls = []
    for turn in ["And Lyon to Marseille?", "Which is faster?"]:
        calls.append(list(conversation))
        answer = ask(client, FRESH, conversation).choices[0].message.content
        conversation += [{"role": "assistant", "content": answer}, {"role": "user", "content": turn}]
    calls += [conversation, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Berlin?"}],
              calls[0]]
    cached = []
    for messages in calls:
        reused, fresh = ask(client, MODEL, messages), ask(client, FRESH, messages)
        assert reused.choices[0].message.content == fresh.choices[0].message.content, len(messages)
        assert reused.usage.completion_tokens == fresh.usage.completion_tokens
        # The whole prompt is counted either way; only its cached share differs.
        assert reused.usage.prompt_tokens == fresh.usage.prompt_tokens
        assert fresh.usage.prompt_tokens_details.cached_tokens == 0
        cached.append((reused.usage.prompt_tokens_details.cached_tokens, reused.usage.prompt_tokens))
    # Every call after the first shares at least the system prompt with the one before.
    assert all(hit > 100 for hit, _ in cached[1:]), cached
    # The growing conversation reuses the previous prompt but for its last
    # partial chunk (with flash attention, as configured, reuse stops at
    # 64-token boundaries, for exact output).
    assert cached[1][0] > cached[0][1] - 64, cached


def stream_answer(client, model, messages, max_tokens=32):
    """The streamed answer's text, and when its first and last chunks came."""
    import time
    text, first = "", None
    stream = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                            max_tokens=max_tokens, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic()
            text += chunk.choices[0].delta.content
    return text, first, time.monotonic()


def test_four_agents_at_once_decode_together_and_each_gets_its_lone_answer(client):
    from concurrent.futures import ThreadPoolExecutor
    agents = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
              for question in ["Paris to Lyon?", "Rome to Milan?", "Madrid to Seville?", "Oslo to Bergen?"]]
    alone = [stream_answer(client, MODEL, messages)[0] for messages in agents]
    with ThreadPoolExecutor(len(agents)) as pool:
        together = list(pool.map(lambda messages: stream_answer(client, MODEL, messages), agents))
    assert [text for text, _, _ in together] == alone
    # They ran at once (one slot would run them one after another): two
    # streams were generating at the same moment.
    spans = sorted((first, last) for _, first, last in together)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans
