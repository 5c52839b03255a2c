"""RunGate's embedded engine next to llama.cpp's server (llama-cpp-python),
the same GGUF on the same threads, driven as an agent would drive them: the
official `openai` client, streamed, greedy. Prints markdown rows.

Usage: peer.py --ours URL --peer URL --model ID --runs N
"""
import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import openai

SYSTEM = ("You are an agent that books travel. Rules: confirm dates, prefer trains under 600 km, "
          "never invent prices, cite the tool you used. Tools: search_trains(from, to, date), "
          "search_flights(from, to, date), book(offer_id). ") * 19
SHORT = "Write a short poem about the sea, in four lines, with a rhyme in every line."


def stream(client, model, messages, max_tokens):
    """(TTFT s, decode tok/s, tokens, first, last) of one streamed greedy call."""
    start = time.monotonic()
    first = last = None
    tokens = 0
    response = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                              max_tokens=max_tokens, stream=True)
    for chunk in response:
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.monotonic()
            first = first or now
            last = now
            tokens += 1
    if first is None:
        raise RuntimeError(f"{model}: no content streamed")
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return first - start, decode, tokens, first, last


def agent(turn):
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Question {turn}: how do I get from city {turn} to city {turn + 1}?"}]


def workloads():
    """(name, messages for call i, max_tokens)."""
    return [
        ("~1,200-token shared system prompt, a new user turn each call", agent, 64),
        ("the same short prompt repeated", lambda i: [{"role": "user", "content": SHORT}], 64),
        ("a different prompt every call (nothing to reuse)",
         lambda i: [{"role": "user", "content": f"Story {i}: {SHORT} Mention the number {i * 7919}."}], 64),
    ]


def concurrent(client, model, n, max_tokens, turn):
    """n agents at once: aggregate tok/s, each stream's decode tok/s."""
    start = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(lambda k: stream(client, model, agent(turn * 10 + k), max_tokens), range(n)))
    wall = max(last for *_, last in runs) - start
    return sum(tokens for _, _, tokens, _, _ in runs) / wall, [decode for _, decode, *_ in runs]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ours", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    sides = {
        "ours": openai.OpenAI(base_url=args.ours + "/v1", api_key="unused", max_retries=0),
        "peer": openai.OpenAI(base_url=args.peer + "/v1", api_key="unused", max_retries=0),
    }
    print("| workload (median of %d) | RunGate TTFT | peer TTFT | RunGate decode | peer decode |" % args.runs)
    print("|---|---|---|---|---|")
    for name, messages, max_tokens in workloads():
        results = {side: [] for side in sides}
        for side, client in sides.items():
            stream(client, args.model, messages(10_000), max_tokens)  # warm-up (and the shared prefix)
        for i in range(args.runs):
            for side, client in sides.items():  # alternating: drift hits both
                results[side].append(stream(client, args.model, messages(i), max_tokens))
        ttft = {side: statistics.median(r[0] for r in runs) * 1000 for side, runs in results.items()}
        decode = {side: statistics.median(r[1] for r in runs) for side, runs in results.items()}
        print(f"| {name} | {ttft['ours']:.0f} ms | {ttft['peer']:.0f} ms "
              f"| {decode['ours']:.0f} tok/s | {decode['peer']:.0f} tok/s |")

    print()
    print("| 4 agents at once, 128 tokens each | RunGate | peer |")
    print("|---|---|---|")
    rows = {}
    for side, client in sides.items():
        lone = statistics.median(stream(client, args.model, agent(900 + i), 128)[1] for i in range(3))
        aggregate, each = concurrent(client, args.model, 4, 128, 1)
        rows[side] = (lone, aggregate, min(each))
    print(f"| one stream alone | {rows['ours'][0]:.0f} tok/s | {rows['peer'][0]:.0f} tok/s |")
    print(f"| 4 streams, aggregate | {rows['ours'][1]:.0f} tok/s ({rows['ours'][1] / rows['ours'][0]:.1f}x) "
          f"| {rows['peer'][1]:.0f} tok/s ({rows['peer'][1] / rows['peer'][0]:.1f}x) |")
    print(f"| slowest of the 4 streams | {rows['ours'][2]:.0f} tok/s ({100 * rows['ours'][2] / rows['ours'][0]:.0f}%) "
          f"| {rows['peer'][2]:.0f} tok/s ({100 * rows['peer'][2] / rows['peer'][0]:.0f}%) |")


if __name__ == "__main__":
    main()
