"""Cost accounting: the AWS calls code makes, what they consume and how long they take.

- :mod:`infra.accounting.calls`: a botocore event hook counting and timing calls per
  service and operation, attributed to ``with counter.operation("..."):`` blocks;
- :mod:`infra.accounting.itemsize`: DynamoDB item sizes and capacity units, by the
  published rules;
- :mod:`infra.accounting.dynamodb`: write and read units and storage computed from the
  items as stored (read back from the emulator after a run);
- :mod:`infra.accounting.invocations`: the opt-in per-invocation records of the local
  runtime's workers (``COUNT_BACKEND_CALLS``), and :mod:`infra.accounting.gateway` its
  gateway's per-request records;
- :mod:`infra.accounting.breakdown`: a request's time split from those records (client,
  gateway, worker exchange, handler's own code, AWS calls);
- :mod:`infra.accounting.prices`: the list prices the bench turns these into dollars with,
  and :mod:`infra.accounting.latency` the in-region latencies it prices the cloud path's
  time with.
"""
