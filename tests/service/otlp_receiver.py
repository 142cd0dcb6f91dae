"""An OTLP/HTTP trace receiver for tests/service/traces.rs.

Listens on 127.0.0.1 (a free port), takes `POST /v1/traces` bodies in the OTLP/HTTP binary
encoding (an `ExportTraceServiceRequest` protobuf, optionally gzip-compressed; see
https://opentelemetry.io/docs/specs/otlp/#otlphttp), decodes them with PyPI's
`opentelemetry-proto`, and appends each span as one JSON line to the file named by its first
argument:

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex or empty>",
     "name": "...", "kind": "SPAN_KIND_SERVER", "status": "STATUS_CODE_ERROR",
     "status_message": "...", "node": "<service.instance.id>", "service": "<service.name>",
     "attributes": {"app": "...", ...}}

Prints `listening <port>` on stdout once it accepts connections. Runs until killed.

    python otlp_receiver.py SPANS_FILE [CERT_PEM KEY_PEM]

With a certificate chain and its key it speaks HTTPS instead (for `https://` endpoints).
"""

import gzip
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

LOCK = threading.Lock()


def any_value(value):
    """The Python value of an OTLP AnyValue (scalars only; others as their text)."""
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return str(value)


def attributes(pairs):
    return {pair.key: any_value(pair.value) for pair in pairs}


def spans_of(request):
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                    "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                    "status_message": span.status.message,
                    "node": resource.get("service.instance.id", ""),
                    "service": resource.get("service.name", ""),
                    "attributes": attributes(span.attributes),
                }


class Handler(BaseHTTPRequestHandler):
    spans_file = None

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding", "") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404, "only /v1/traces")
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as error:  # a malformed body is the exporter's bug: say so
            self.send_error(400, f"not an ExportTraceServiceRequest: {error}")
            return
        lines = [json.dumps(span) + "\n" for span in spans_of(request)]
        with LOCK, open(self.spans_file, "a", encoding="utf-8") as out:
            out.writelines(lines)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format, *args):
        sys.stderr.write("otlp-receiver: " + (format % args) + "\n")


def main():
    Handler.spans_file = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if len(sys.argv) == 4:
        # HTTPS with this certificate chain and key (PEM files): argv[2], argv[3].
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
