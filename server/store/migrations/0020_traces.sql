-- OpenTelemetry traces (docs/tracing.md): a job's `traceparent` is the W3C trace context of
-- its submit span (or, on a server that does not trace, the submitter's own): what its
-- queue-wait, run and completion spans are children of, handed to its holder in the claim.
ALTER TABLE jobs ADD COLUMN traceparent text;
