"""The official OpenAI Python SDK against the local cluster, on the embedded
default model (SmolLM2-135M-Instruct, run by the local llama.cpp engine)."""
import openai
import pytest

MODEL = "smollm2-135m-instruct"
FRANCE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_models_list_and_retrieve_the_default_model(client):
    assert MODEL in [m.id for m in client.models.list()]
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_non_streaming_answer_is_right_with_consistent_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    choice = r.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_answer_matches_and_reports_usage(client):
    whole = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0,
        stream=True, stream_options={"include_usage": True},
    ))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage


def test_max_tokens_ends_with_length_and_exactly_that_many_tokens(client):
    for max_tokens in (1, 3):
        r = client.chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0, max_tokens=max_tokens)
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == max_tokens


def test_max_completion_tokens_is_honoured_too(client):
    r = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_completion_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 2


def test_stop_sequences_are_honoured(client):
    r = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, stop=["Paris"])
    content = r.choices[0].message.content
    assert "Paris" not in content
    assert content.startswith("The capital of France is")
    assert r.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(client):
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
               temperature=1.0, seed=42, max_tokens=24)
    first = client.chat.completions.create(**ask).choices[0].message.content
    second = client.chat.completions.create(**ask).choices[0].message.content
    assert first == second


def test_invalid_requests_are_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=5)
    assert error.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=FRANCE, logprobs=True)
    assert error.value.param == "logprobs"
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert error.value.code == "model_not_found"
