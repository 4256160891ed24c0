"""The folder uploader: DICOM files from folders and zip files into a DICOMweb store.

``python -m infra.upload DIR_OR_ZIP...`` (``make upload DIR=...``) finds the Part 10 files
(headers only), sends small instances as STOW-RS batches under the API's request ceiling
and larger ones through upload sessions (presigned S3 uploads), in parallel, with retries
that are safe to repeat and a journal that lets an interrupted upload resume. One module
per job:

- :mod:`.files`: walking folders and zip files, reading File Meta Information;
- :mod:`.batches`: the plan (STOW-RS batches, upload sessions); :func:`stow_batches` sizes
  any client's ``store_instances`` batches;
- :mod:`.client`: HTTP (STOW-RS, upload sessions), retries and backoff;
- :mod:`.outcomes`: each file's result, read from the Store Instances Response;
- :mod:`.journal`: the resume journal;
- :mod:`.auth`: bearer tokens (given, Cognito client credentials, the local stack's);
- :mod:`.uploader`: the run itself, its progress bar and its report;
- :mod:`.__main__`: the command line.

Development and operations tooling: not part of any Lambda layer or function.
"""

from infra.upload.batches import MAX_INSTANCES_PER_REQUEST, MAX_REQUEST_BYTES, TooLargeForStow, stow_batches

__all__ = ["MAX_INSTANCES_PER_REQUEST", "MAX_REQUEST_BYTES", "TooLargeForStow", "stow_batches"]
