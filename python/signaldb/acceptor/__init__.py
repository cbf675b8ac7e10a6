"""signaldb-acceptor: the durable OTLP front door.

Layout (receiver / processor / exporter, as in the OpenTelemetry Collector):

- ``grpc_receiver`` and ``http_receiver`` only decode the transport (framing,
  compression, auth, content type) and encode answers; both call
  ``ingest.Ingest.export()``, the one place a request is validated, admitted
  and made durable.
- ``entry_format``: how a request is stored in the acceptor WAL.
- ``admission``: backpressure (backlog limit, disk full) shared by both receivers.
- ``responses``: OTLP responses and ``google.rpc.Status`` errors, protobuf and JSON.
- ``refusals``: why a request is refused (one ``Reason`` enum: HTTP status, gRPC
  code, metric label) and the one place refusals are counted and logged.
- ``decompress``: OTLP/HTTP ``Content-Encoding`` (gzip, deflate, zstd, snappy), capped.
- ``cors``: CORS for browser exporters on OTLP/HTTP.
- ``forwarder``: the background exporter, WAL → Arrow → Flight do_put → writer.
- ``service``: wiring and lifecycle; ``main``: the command line.
"""

from signaldb.service.logsetup import quiet_grpc_core

quiet_grpc_core()  # before any submodule imports grpc (signaldb.service.logsetup)
