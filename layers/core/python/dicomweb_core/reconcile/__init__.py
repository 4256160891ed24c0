"""Reconciliation: S3 and the index compared, and repaired both ways, by a scheduled job.

S3 is the source of truth and every write puts its objects before it indexes them
(docs/write-safety.md), so a process that dies in between leaves an instance in S3 that no
search finds, and an overwrite or a losing duplicate whose clean-up failed leaves objects
nothing points at. An index entry whose object is gone (deleted out of band, or expired
because its version became noncurrent) would answer searches with an instance nobody can
retrieve. The job, run daily by EventBridge Scheduler (template.yaml ``ReconcileSchedule``),
looks at both directions in bounded steps and resumes where the last run stopped:

- :mod:`.objects`: each instance object under ``studies/``, older than a grace period,
  against the index (its SOP claim and instance item): indexed here (nothing to do), not
  indexed (stored again through STOW-RS's own code, then the stray object hidden), or
  indexed at another object (a leftover: hidden). Hiding is a delete marker: recoverable,
  never a deleted version;
- :mod:`.index_entries`: each instance item against its object version: a missing one is
  flagged in the report, never removed from the index; a SOP claim that never got its
  instance is released;
- :mod:`.report`: what a run did, as a JSON object under ``reports/reconcile/``,
  CloudWatch metrics and PS3.15 audit records;
- :mod:`.cursor`: where the next run goes on;
- :mod:`.job`: one run, within the invocation's time.
"""
