"""The writer service: Arrow Flight in, writer WAL, Parquet out (DESIGN.md steps 3-5).

Modules, in the order data flows through them:

- ``ingest``   Flight ``do_put``: validates, dedupes, appends to the WAL, acks.
- ``ledger``   which (acceptor, table, entry id) the writer already holds (the sink owns it).
- ``payload``  the bytes of one writer WAL entry (header + Arrow IPC stream).
- ``tables``   reference schemas, WAL kinds, hour partitions.
- ``sink``     buffers rows per table and hour, writes files, marks entries processed.
- ``state``    the durable state file: dedupe index and planned files.
- ``parquet``  one Parquet file's bytes.
- ``storage``  file:// and s3:// object stores with retries.
- ``metrics``  the writer's Prometheus metrics.
- ``service``  the service object: start (health, WAL, replay, Flight) and stop.
- ``main``     the ``signaldb-writer`` process: config, JSON logs, signals, exit codes.
- ``crashpoints`` named SIGKILL points for the crash tests (inert unless set).
"""

from signaldb.service.logsetup import quiet_grpc_core

quiet_grpc_core()  # before any submodule imports grpc (signaldb.service.logsetup)
