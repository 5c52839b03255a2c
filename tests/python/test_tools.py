"""An agent's tool loop through RunGate with the official openai SDK, paid
with the official x402 client: a fake upstream written for these tests
answers with tool calls (one, and two in parallel), streamed and not; the
SDK assembles them (its own stream helpers for streams); the agent sends the
results back as `role: "tool"` messages and gets its final answer."""
import json
import os
import subprocess
import tempfile
import time

import httpx
import jsonschema
import openai
import pytest

from conftest import REPO, PayingTransport, paying_client, run_cluster
from dev_chain import DEMO_PAYER_KEY, TOKEN
from fake_tools_upstream import Upstream
from x402_helpers import receipt, required

MODEL = "tool-agent"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def tools():
    """A cluster whose `tool-agent` model is the fake upstream (priced per
    prompt token, so the tools' share of the prompt shows in the price)."""
    upstream = Upstream()
    with open(os.path.join(REPO, "config/models.toml")) as f:
        models = f.read()
    models += f'\n[[models]]\nid = "{MODEL}"\nengine = {{ kind = "upstream", upstreams = [{{ base_url = "{upstream.url}" }}] }}\n'
    prices = f'[default]\nper_call = "1"\n\n[models."{MODEL}"]\nper_call = "1"\nper_prompt_token = "1"\nper_completion_token = "0"\n'
    with tempfile.TemporaryDirectory() as folder:
        models_file, prices_file = os.path.join(folder, "models.toml"), os.path.join(folder, "prices.toml")
        with open(models_file, "w") as f:
            f.write(models)
        with open(prices_file, "w") as f:
            f.write(prices)
        for cluster in run_cluster("--models-file", models_file, "--prices-file", prices_file):
            http = httpx.Client(transport=PayingTransport(paying_client(DEMO_PAYER_KEY)), timeout=60)
            client = openai.OpenAI(base_url=cluster.edge_url + "/v1", api_key="unused", max_retries=0,
                                   http_client=http)
            yield cluster, upstream, client
    upstream.close()


def ask(client, stream, messages):
    """One turn: the assembled completion, streamed with the SDK's helper or not."""
    if stream:
        with client.chat.completions.stream(model=MODEL, messages=messages, tools=[WEATHER]) as events:
            return events.get_final_completion()
    return client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
@pytest.mark.parametrize("cities", [["Paris"], ["Paris", "London"]], ids=["one call", "parallel calls"])
def test_an_agent_runs_a_tool_loop(tools, stream, cities):
    _, upstream, client = tools
    question = "What is the weather in Paris?" if len(cities) == 1 else "Weather in Paris and London, in parallel."
    messages = [{"role": "user", "content": question}]

    first = ask(client, stream, messages)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    calls = choice.message.tool_calls
    assert [c.type for c in calls] == ["function"] * len(cities)
    assert [c.function.name for c in calls] == ["get_weather"] * len(cities)
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": city} for city in cities]
    assert [c.id for c in calls] == [f"call_{i}_{city.lower()}" for i, city in enumerate(cities)]

    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
        for c in calls]})
    for city in cities:
        messages.append({"role": "tool", "tool_call_id": f"call_{cities.index(city)}_{city.lower()}",
                         "content": f"{city}: 18 C and sunny"})
    final = ask(client, stream, messages)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "Results: " + "; ".join(f"{c}: 18 C and sunny" for c in cities)

    # The upstream got the agent's tool calls and results exactly.
    sent = upstream.received[-1]["messages"]
    assert sent[1]["tool_calls"] == messages[1]["tool_calls"]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in sent[2:]] == [
        ("tool", m["tool_call_id"], m["content"]) for m in messages[2:]]


def test_a_paid_tool_call_has_a_receipt_with_its_usage(tools):
    cluster, _, client = tools
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, tools=[WEATHER], messages=[{"role": "user", "content": "Weather in Paris?"}])
    completion = raw.parse()
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"
    # The usage is written just after the answer goes out.
    deadline = time.time() + 10
    while (shown := receipt(cluster.edge_url, raw.headers["x-rungate-receipt"]))["usage"]["prompt_tokens"] == 0:
        assert time.time() < deadline, shown
        time.sleep(0.1)
    assert shown["usage"]["prompt_tokens"] == completion.usage.prompt_tokens == 11
    assert shown["usage"]["completion_tokens"] == completion.usage.completion_tokens > 0


def test_a_refusal_comes_back_as_the_refusal_field(tools):
    _, _, client = tools
    for stream in (False, True):
        reply = ask(client, stream, [{"role": "user", "content": "Please refuse this."}])
        assert reply.choices[0].message.refusal == "I can't help with that."


def test_tool_definitions_count_as_prompt_tokens_in_the_price(tools):
    cluster, _, _ = tools
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    _, plain = required(cluster.edge_url, body)
    _, with_tools = required(cluster.edge_url, {**body, "tools": [WEATHER]})
    tools_tokens = int(with_tools["accepts"][0]["amount"]) - int(plain["accepts"][0]["amount"])
    # About a token per four bytes of the tools' JSON (as sent on, compact),
    # at 1 unit a prompt token.
    assert abs(tools_tokens - len(json.dumps([WEATHER], separators=(",", ":"))) / 4) <= 1


def test_the_npm_openai_sdk_streams_a_tool_call_through_rungate(tools):
    cluster, _, _ = tools
    run = subprocess.run(["node", "tools.mjs", cluster.edge_url, DEMO_PAYER_KEY, TOKEN, MODEL],
                         cwd=os.path.join(REPO, "tests/js"), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    completion = json.loads(run.stdout)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


LOCAL = "smollm2-135m-instruct"
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time now in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


def on_local(client, stream, **ask):
    """One greedy turn on the embedded SmolLM2 (paid like any other call)."""
    ask = {"model": LOCAL, "temperature": 0, "max_tokens": 160, **ask}
    if stream:
        with client.chat.completions.stream(**ask) as events:
            return events.get_final_completion()
    return client.chat.completions.create(**ask)


def assert_valid_calls(choice):
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls, choice
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_"), call
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in choice.message.tool_calls}) == len(choice.message.tool_calls)


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_the_embedded_model_runs_a_tool_loop(tools, stream):
    _, _, client = tools
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = on_local(client, stream, messages=messages, tools=[WEATHER, TIME], tool_choice=named,
                     parallel_tool_calls=False)
    choice = first.choices[0]
    assert_valid_calls(choice)
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert not choice.message.content

    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"})
    final = on_local(client, stream, messages=messages, tools=[WEATHER, TIME], tool_choice="none")
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content.strip(), final


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_the_embedded_model_calls_a_tool_when_one_is_required(tools, stream):
    _, _, client = tools
    reply = on_local(client, stream, tools=[WEATHER, TIME], tool_choice="required",
                     messages=[{"role": "user", "content": "What time is it in Tokyo?"}])
    assert_valid_calls(reply.choices[0])


def test_the_embedded_model_either_calls_a_known_tool_or_answers_in_text_on_auto(tools):
    _, _, client = tools
    for question in ("What is the weather in Paris?", "Say hello."):
        choice = on_local(client, False, tools=[WEATHER, TIME],
                          messages=[{"role": "user", "content": question}]).choices[0]
        if choice.message.tool_calls:
            assert_valid_calls(choice)
        else:
            # A reply, never the tool format's JSON leaking into the content.
            assert choice.message.content.strip() and '"response"' not in choice.message.content, choice


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_the_embedded_model_answers_with_json_matching_a_strict_schema(tools, stream):
    _, _, client = tools
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "country", "capital"],
              "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40},
                             "capital": {"type": "boolean"}}}
    reply = on_local(client, stream, messages=[{"role": "user", "content": "Describe Paris."}],
                     response_format={"type": "json_schema",
                                      "json_schema": {"name": "city", "strict": True, "schema": schema}})
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice
    answer = json.loads(choice.message.content)
    jsonschema.validate(answer, schema)
    # In the schema's order, as a strict schema promises.
    assert list(answer) == ["city", "country", "capital"]


def test_a_paid_local_tool_call_has_a_receipt_with_its_usage_and_tools_are_prompt_tokens(tools):
    cluster, _, client = tools
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain = on_local(client, False, messages=question, max_tokens=1)
    raw = client.chat.completions.with_raw_response.create(
        model=LOCAL, temperature=0, max_tokens=160, messages=question, tools=[WEATHER], tool_choice="required")
    completion = raw.parse()
    assert_valid_calls(completion.choices[0])
    # The model reads the tools' description: it is part of the prompt.
    assert completion.usage.prompt_tokens > plain.usage.prompt_tokens + 30
    deadline = time.time() + 10
    while (shown := receipt(cluster.edge_url, raw.headers["x-rungate-receipt"]))["usage"]["prompt_tokens"] == 0:
        assert time.time() < deadline, shown
        time.sleep(0.1)
    assert shown["usage"]["prompt_tokens"] == completion.usage.prompt_tokens
    assert shown["usage"]["completion_tokens"] == completion.usage.completion_tokens > 0


def test_the_local_engine_refuses_what_it_cannot_constrain_before_asking_for_payment(tools):
    cluster, _, _ = tools
    base = {"model": LOCAL, "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    for extra, param in [
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}},
         "response_format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
         "tool_choice.function.name"),
    ]:
        # No payment presented: a request the engine cannot serve is a 400, not a 402.
        response = httpx.post(cluster.edge_url + "/v1/chat/completions", json={**base, **extra}, timeout=30)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param), error


@pytest.mark.parametrize("stream", [False, True], ids=["once", "stream"])
def test_logprobs_and_response_format_pass_through(tools, stream):
    _, upstream, client = tools
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Hello"}], logprobs=True, top_logprobs=2,
               response_format={"type": "json_object"})
    if stream:
        with client.chat.completions.stream(**ask) as events:
            reply = events.get_final_completion()
    else:
        reply = client.chat.completions.create(**ask)
    assert upstream.received[-1]["response_format"] == {"type": "json_object"}
    assert upstream.received[-1]["top_logprobs"] == 2
    choice = reply.choices[0]
    assert choice.message.content == "No tools needed."
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert [e.logprob for e in entries] == [0.0, -0.25, -0.5]
    assert all(len(e.top_logprobs) == 2 for e in entries)
