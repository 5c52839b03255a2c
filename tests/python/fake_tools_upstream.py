"""A fake OpenAI-compatible upstream that calls tools, written for the tests:
RunGate always streams from upstreams, so it answers in SSE only.

- a request with `tools` whose last message is the user's: one call to the
  first tool (two, in parallel, when the user says "parallel"), arguments
  streamed in small fragments, `finish_reason: "tool_calls"`;
- a request whose last message is a `tool` result: text quoting the results;
- a user message saying "refuse": a `refusal` delta;
- otherwise text a word a chunk, with OpenAI's `logprobs` entries when the
  request asks for them (`top_logprobs` alternatives each).
Every request body is kept in `received` for the test to check."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CITIES = ["Paris", "London"]


def chunk(delta, finish=None, logprobs=None):
    return {"id": "fake-tools", "object": "chat.completion.chunk", "created": 0, "model": "fake-tools",
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def logprob(token, at, alternatives):
    entry = lambda t, lp: {"token": t, "logprob": lp, "bytes": list(t.encode())}
    return {**entry(token, -0.25 * at),
            "top_logprobs": [entry(token + "?" * i, -0.25 * at - i) for i in range(alternatives)]}


def text_frames(text, body):
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1].rstrip()
    frames = []
    for at, word in enumerate(words):
        logprobs = {"content": [logprob(word, at, body.get("top_logprobs") or 0)], "refusal": None}
        frames.append(chunk({"content": word}, logprobs=logprobs if body.get("logprobs") else None))
    return frames


def tool_call_frames(tools, parallel):
    name = tools[0]["function"]["name"]
    frames = []
    for index, city in enumerate(CITIES if parallel else CITIES[:1]):
        arguments = json.dumps({"city": city})
        frames.append(chunk({"tool_calls": [{"index": index, "id": f"call_{index}_{city.lower()}",
                                             "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))
        for at in range(0, len(arguments), 5):
            frames.append(chunk({"tool_calls": [{"index": index,
                                                 "function": {"arguments": arguments[at:at + 5]}}]}))
    return frames, "tool_calls", len(frames)


def answer(body):
    messages = body.get("messages", [])
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        results = [m["content"] for m in messages if m.get("role") == "tool"]
        text = "Results: " + "; ".join(results)
        return [chunk({"content": text})], "stop", len(text.split())
    user = last.get("content") or ""
    if "refuse" in user:
        return [chunk({"refusal": "I can't help with that."})], "stop", 5
    if body.get("tools") and body.get("tool_choice") != "none":
        return tool_call_frames(body["tools"], "parallel" in user)
    return text_frames("No tools needed.", body), "stop", 3


class Upstream:
    def __init__(self):
        self.received = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream.received.append(body)
                frames, finish, completion_tokens = answer(body)
                frames = [chunk({"role": "assistant"})] + frames + [chunk({}, finish)]
                frames.append({"id": "fake-tools", "object": "chat.completion.chunk", "created": 0,
                               "model": "fake-tools", "choices": [],
                               "usage": {"prompt_tokens": 11, "completion_tokens": completion_tokens,
                                         "total_tokens": 11 + completion_tokens}})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for frame in frames:
                    self.wfile.write(f"data: {json.dumps(frame)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
