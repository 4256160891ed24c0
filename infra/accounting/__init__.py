"""Cost accounting: the AWS calls code makes, and what they consume, per operation.

- :mod:`infra.accounting.calls`: a botocore event hook counting calls per service and
  operation, attributed to ``with counter.operation("..."):`` blocks;
- :mod:`infra.accounting.itemsize`: DynamoDB item sizes and capacity units, by the
  published rules;
- :mod:`infra.accounting.dynamodb`: write and read units and storage computed from the
  items as stored (read back from the emulator after a run);
- :mod:`infra.accounting.invocations`: the opt-in per-invocation records of the local
  runtime's workers (``COUNT_BACKEND_CALLS``);
- :mod:`infra.accounting.prices`: the list prices the bench turns these into dollars with.
"""
