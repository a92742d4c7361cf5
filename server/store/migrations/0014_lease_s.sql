-- A job may ask for its own lease (per script or per job), so that a long job on a site with
-- outages can outlast a partition shorter than its lease. NULL: the server's TAGRUN_LEASE_S.
ALTER TABLE scripts ADD COLUMN lease_s float8;
ALTER TABLE jobs ADD COLUMN lease_s float8;
