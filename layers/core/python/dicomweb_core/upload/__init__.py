"""Upload sessions: instances of any size into the store, straight to S3 by presigned URL.

A STOW-RS request through API Gateway and Lambda carries about 4.4 MB of instances. A
session lifts that ceiling without a second ingest path: the client declares its files,
uploads each one to a presigned URL under ``ingest/``, and the bucket's event (through a
queue with a dead-letter queue) makes the ingest function store it with the very code
STOW-RS uses (:class:`~dicomweb_core.stow.service.StowService`), with the same failure
reasons. The session's status answers with the Store Instances Response Module (PS3.18
§10.5.3) of what was stored. docs/upload-sessions.md has the protocol and its bounds.
"""
