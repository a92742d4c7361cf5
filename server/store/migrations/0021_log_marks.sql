-- Each log chunk's marks (shared/loglines.py): where its lines begin, when and on which
-- stream, as flat (position in the chunk, epoch ms, stream code) triples, written by the
-- statement that appends the chunk. NULL: a chunk from a holder that does not mark lines.
ALTER TABLE job_logs ADD COLUMN marks int8[];
