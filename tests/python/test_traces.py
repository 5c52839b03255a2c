"""One paid call is one connected trace across the four services: an OTLP
collector in the test process receives every service's span exports (gRPC),
a paid call from the official x402 client carries the caller's
`traceparent`, and the spans of that trace come from edge, billing,
inference and ledger, each parented inside the trace, with the OpenTelemetry
GenAI attributes on the generation and the payment's on billing's span."""
import concurrent.futures
import os
import secrets
import time

import grpc
import httpx
import openai
from eth_account import Account
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import PayingTransport, paying_client, run_cluster
from dev_chain import DEMO_PAYER_KEY
from x402_helpers import required

MODEL = "smollm2-135m-instruct"
SERVICES = {"rungate-edge", "rungate-billing", "rungate-inference", "rungate-ledger"}


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(pairs):
    return {pair.key: value(pair.value) for pair in pairs}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every exported span with the name of the service that sent it."""

    def __init__(self):
        self.spans = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = attributes(resource_spans.resource.attributes).get("service.name")
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_one_paid_call_is_one_connected_trace_across_the_four_services():
    collector = Collector()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    try:
        for cluster in run_cluster():
            http = httpx.Client(transport=PayingTransport(paying_client(DEMO_PAYER_KEY)), timeout=120)
            client = openai.OpenAI(base_url=cluster.edge_url + "/v1", api_key="unused", max_retries=0,
                                   http_client=http)
            completion = client.chat.completions.create(
                model=MODEL, messages=question, max_tokens=8, temperature=0,
                extra_headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
            _, offer = required(cluster.edge_url, {"model": MODEL, "messages": question, "max_tokens": 8,
                                                   "temperature": 0})
            # Let billing finish the call's records before the services stop.
            time.sleep(1)
        # Stopped: every service flushed its spans on the way out.
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        server.stop(0)

    trace = [(service, span) for service, span in collector.spans if span.trace_id.hex() == trace_id]
    assert {service for service, _ in trace} == SERVICES, sorted({s for s, _ in collector.spans})
    # Connected: every span's parent is the caller's span or another span of the trace.
    ids = {span.span_id for _, span in trace} | {bytes.fromhex(caller_span)}
    orphans = [(service, span.name) for service, span in trace if span.parent_span_id not in ids]
    assert not orphans, orphans

    [generation] = [attributes(span.attributes) for service, span in trace
                    if service == "rungate-inference" and span.name == f"chat {MODEL}"]
    assert generation["gen_ai.operation.name"] == "chat"
    assert generation["gen_ai.provider.name"] == "llama.cpp"
    assert generation["gen_ai.request.model"] == generation["gen_ai.response.model"] == MODEL
    assert generation["gen_ai.request.max_tokens"] == 8
    assert generation["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert generation["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert generation["gen_ai.response.finish_reasons"] == completion.choices[0].finish_reason

    payments = [attributes(span.attributes) for service, span in trace
                if service == "rungate-billing" and span.name == "x402 paid call"]
    [paid] = [p for p in payments if "x402.scheme" in p]
    assert paid["x402.scheme"] == "exact"
    assert paid["x402.payer"] == Account.from_key(DEMO_PAYER_KEY).address
    assert paid["x402.network"] == "eip155:8453"
    [exact] = [o for o in offer["accepts"] if o["scheme"] == "exact"]
    assert paid["x402.amount"] == exact["amount"]
