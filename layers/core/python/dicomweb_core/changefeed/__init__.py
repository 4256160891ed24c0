"""The change feed: ``InstanceStored`` derived from the commit itself.

Each index table (the primary store's and the research store's) has a DynamoDB stream with
old and new images. :mod:`~dicomweb_core.changefeed.records` reads a stream record and
tells whether it is the commit of an instance write (the instance item inserted, or its
object replaced under ``DuplicatePolicy=overwrite``); :mod:`~dicomweb_core.changefeed.detail`
turns that item into the ``InstanceStored`` detail consumers read; and
:mod:`~dicomweb_core.changefeed.feed` publishes a batch of records on the bus, reporting the
first record it could not publish so the event source mapping retries from there.

A committed instance therefore always gets its ``InstanceStored``, whatever happens to the
request that committed it, at least once: a retried batch may publish an event twice, and
every event carries ``writeKey`` (one per committed write) for consumers that de-duplicate.
See docs/write-safety.md.
"""
