-- Reliability (docs/reliability.md): the job's lease in Postgres decides when a job is re-sent,
-- not the broker. One commit accepts a job; its send deadline is set in that same INSERT.

ALTER TABLE jobs
    ADD COLUMN lease_owner text,
    ADD COLUMN lost_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN sends integer NOT NULL DEFAULT 1;
COMMENT ON COLUMN jobs.lease_owner IS 'While running: the worker process holding the lease (host:pid); a dead local holder is taken over at once.';
COMMENT ON COLUMN jobs.lost_attempts IS 'Attempts whose worker died holding the lease (taken over or re-sent); past FACELIB_JOB_MAX_LOST_ATTEMPTS the job fails with 6003.';
COMMENT ON COLUMN jobs.failed_attempts IS 'Attempts that ended in a transient error (database, broker, fetch, timeout); at max_attempts the job fails with 6003.';
COMMENT ON COLUMN jobs.sends IS 'Messages sent to the broker for this job: 1 by the API, one more per re-send by the sweeper.';
COMMENT ON COLUMN jobs.lease_expires_at IS 'Queued: the send deadline (not claimed by then: the sweeper re-sends it). Running: when the worker''s lease ends (then the sweeper re-queues and re-sends it).';
COMMENT ON COLUMN jobs.attempts IS 'How many times a worker claimed this job (failed + lost + the current or last one).';
COMMENT ON COLUMN jobs.enqueued_at IS 'Unused since 0007 (the send deadline is lease_expires_at); kept for old rows.';

-- jobs accepted before this migration and still queued get a send deadline now
UPDATE jobs SET lease_expires_at = now() WHERE status = 'queued' AND lease_expires_at IS NULL;

CREATE INDEX jobs_active_lease_idx ON jobs (lease_expires_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE status IN ('done', 'failed');
CREATE INDEX callback_attempts_attempted_at_idx ON callback_attempts (attempted_at);

CREATE OR REPLACE VIEW job_queue AS
    SELECT j.status,
           j.kind,
           CASE
               WHEN now() - j.created_at < interval '1 minute' THEN '0-1 min'
               WHEN now() - j.created_at < interval '5 minutes' THEN '1-5 min'
               WHEN now() - j.created_at < interval '1 hour' THEN '5-60 min'
               ELSE 'over 1 h'
           END AS age,
           count(*) AS jobs,
           min(j.created_at) AS oldest_created_at,
           max(now() - j.created_at) AS oldest_age,
           count(*) FILTER (WHERE j.status = 'queued' AND j.lease_expires_at < now()) AS not_sent_to_broker,
           count(*) FILTER (WHERE j.status = 'running' AND j.lease_expires_at < now()) AS lease_expired,
           max(j.attempts) AS max_attempts_so_far
    FROM jobs j
    WHERE j.status IN ('queued', 'running')
    GROUP BY 1, 2, 3;
COMMENT ON COLUMN job_queue.not_sent_to_broker IS 'Queued jobs past their send deadline, not claimed by a worker (message lost or late; the sweeper re-sends them).';

-- Retention: the audit log stays append-only, except that rows older than the legal minimum
-- (5 years, shared.settings.AUDIT_MIN_RETENTION_DAYS) may be deleted by the purge task.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < now() - interval '1825 days' THEN
        RETURN OLD;  -- retention purge past the legal minimum
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.person_ref IS NULL AND OLD.person_ref IS NOT NULL
       AND (NEW.id, NEW.at, NEW.client_id, NEW.method, NEW.endpoint, NEW.errcode, NEW.http_status,
            NEW.task_id, NEW.source_ip, NEW.request_id, NEW.duration_ms)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.client_id, OLD.method, OLD.endpoint, OLD.errcode, OLD.http_status,
            OLD.task_id, OLD.source_ip, OLD.request_id, OLD.duration_ms) THEN
        RETURN NEW;  -- erasure of the person link
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
COMMENT ON FUNCTION audit_log_append_only() IS 'Refuses UPDATE/DELETE on audit_log except clearing person_ref (erasure) and deleting rows older than the 5-year legal minimum (retention).';
