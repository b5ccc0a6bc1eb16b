-- The DBA surface: views that answer the usual questions without personal data beyond the
-- masked idNum and the name, a read-only role granted those views only, and the indexes that
-- the management API's list filters and a person's erasure use. See docs/dba.md.

-- Indexes ----------------------------------------------------------------------------------------
-- name prefix search (API person/list namePrefix, DBAs' `name LIKE 'Zhang%'`)
CREATE INDEX persons_name_prefix_idx ON persons (name text_pattern_ops);
CREATE INDEX persons_created_idx ON persons (created_at, id);
CREATE INDEX persons_customer_idx ON persons (customer_id) WHERE customer_id <> '';
-- erasure finds the jobs and callbacks that name a person (only matched recognitions and 1:1
-- verifications carry a reference, so these partial indexes stay small)
CREATE INDEX jobs_result_person_idx ON jobs ((result ->> '_personId'))
    WHERE result ? '_personId';
CREATE INDEX jobs_meta_person_idx ON jobs ((request_meta ->> 'personId'))
    WHERE request_meta ? 'personId';
CREATE INDEX callback_deliveries_person_idx ON callback_deliveries ((payload -> 'data' ->> '_personId'))
    WHERE payload -> 'data' ? '_personId';

-- Views ------------------------------------------------------------------------------------------
CREATE VIEW person_summary AS
    SELECT p.id AS person_id,
           p.id_num_masked,
           p.name,
           p.person_type,
           p.customer_id,
           (SELECT count(*) FROM faces f WHERE f.person_id = p.id) AS faces,
           c.name AS created_by_client,
           p.created_at,
           p.updated_at
    FROM persons p LEFT JOIN api_clients c ON c.id = p.created_by;
COMMENT ON VIEW person_summary IS 'One row per enrolled person: masked idNum, name, type, customer id, number of faces, timestamps. No embeddings, no raw or encrypted idNum.';
COMMENT ON COLUMN person_summary.person_id IS 'persons.id; audit_view.person_ref p:<person_id> refers to it.';
COMMENT ON COLUMN person_summary.id_num_masked IS 'The ID number with all but its first 3 and last 3 characters masked, e.g. 610************019.';
COMMENT ON COLUMN person_summary.name IS 'Full name as verified at enrolment (or as last updated).';
COMMENT ON COLUMN person_summary.person_type IS 'normal, vip or inner (staff).';
COMMENT ON COLUMN person_summary.customer_id IS 'The bank''s customer number, empty when not given.';
COMMENT ON COLUMN person_summary.faces IS 'Number of enrolled faces.';
COMMENT ON COLUMN person_summary.created_by_client IS 'The API client (branch or system) that first enrolled the person.';
COMMENT ON COLUMN person_summary.created_at IS 'When the person was first enrolled.';
COMMENT ON COLUMN person_summary.updated_at IS 'When the record last changed (update, new or deleted face).';

CREATE VIEW job_overview AS
    SELECT j.id AS task_id,
           j.kind,
           j.status,
           c.name AS client,
           j.errcode,
           j.errmsg,
           j.result ->> 'isMatch' AS is_match,
           j.result ->> 'score' AS score,
           j.attempts,
           (j.request_meta ->> 'async')::boolean AS async,
           j.request_meta ->> 'origin' AS origin,
           (j.request_meta ->> 'imageBytes')::integer AS image_bytes,
           j.created_at,
           j.started_at,
           j.finished_at,
           extract(epoch FROM j.started_at - j.created_at) AS queue_seconds,
           extract(epoch FROM j.finished_at - j.started_at) AS run_seconds,
           extract(epoch FROM j.finished_at - j.created_at) AS total_seconds,
           j.timings
    FROM jobs j JOIN api_clients c ON c.id = j.client_id;
COMMENT ON VIEW job_overview IS 'Every reg/recong/verify job with its client, outcome and durations; no image, no personal data, no matched person.';
COMMENT ON COLUMN job_overview.task_id IS 'jobs.id, the taskId clients see.';
COMMENT ON COLUMN job_overview.kind IS 'register, recognize or verify.';
COMMENT ON COLUMN job_overview.status IS 'queued, running, done or failed.';
COMMENT ON COLUMN job_overview.client IS 'Name of the client (branch or system) that sent the request.';
COMMENT ON COLUMN job_overview.errcode IS 'Envelope errcode (0 success); NULL while not finished.';
COMMENT ON COLUMN job_overview.errmsg IS 'Envelope errmsg.';
COMMENT ON COLUMN job_overview.is_match IS 'Recognitions and verifications: "true" or "false".';
COMMENT ON COLUMN job_overview.score IS 'Recognitions and verifications: the 0-100 score (text, as answered).';
COMMENT ON COLUMN job_overview.attempts IS 'Worker attempts so far.';
COMMENT ON COLUMN job_overview.async IS 'True when the client asked for an async answer (callback or poll).';
COMMENT ON COLUMN job_overview.origin IS 'Where the image came from: self, fds or uri.';
COMMENT ON COLUMN job_overview.image_bytes IS 'Size of a self image in bytes.';
COMMENT ON COLUMN job_overview.created_at IS 'When the request was accepted.';
COMMENT ON COLUMN job_overview.started_at IS 'When a worker last started it.';
COMMENT ON COLUMN job_overview.finished_at IS 'When it finished.';
COMMENT ON COLUMN job_overview.queue_seconds IS 'Seconds from acceptance to the (last) start.';
COMMENT ON COLUMN job_overview.run_seconds IS 'Seconds from the (last) start to the end.';
COMMENT ON COLUMN job_overview.total_seconds IS 'Seconds from acceptance to the end.';
COMMENT ON COLUMN job_overview.timings IS 'Seconds per stage as the worker measured them: queue_wait, fetch, decode, detect, embed, db, total.';

CREATE VIEW daily_volume AS
    SELECT date_trunc('day', j.created_at)::date AS day,
           c.name AS client,
           j.kind,
           count(*) AS requests,
           count(*) FILTER (WHERE j.status = 'done') AS succeeded,
           count(*) FILTER (WHERE j.status = 'failed') AS failed,
           count(*) FILTER (WHERE j.status IN ('queued', 'running')) AS in_progress,
           count(*) FILTER (WHERE j.result ->> 'isMatch' = 'true') AS matched,
           round(avg(extract(epoch FROM j.finished_at - j.created_at))::numeric, 3) AS avg_seconds,
           round((percentile_cont(0.95) WITHIN GROUP (
               ORDER BY extract(epoch FROM j.finished_at - j.created_at)))::numeric, 3) AS p95_seconds
    FROM jobs j JOIN api_clients c ON c.id = j.client_id
    GROUP BY 1, 2, 3;
COMMENT ON VIEW daily_volume IS 'Registrations, recognitions and verifications per day per client, with outcomes and durations. Days follow the session time zone (SET TimeZone = ''Asia/Shanghai'').';
COMMENT ON COLUMN daily_volume.day IS 'Day the requests were accepted, in the session time zone.';
COMMENT ON COLUMN daily_volume.client IS 'Client (branch or system) name.';
COMMENT ON COLUMN daily_volume.kind IS 'register, recognize or verify.';
COMMENT ON COLUMN daily_volume.requests IS 'Requests accepted.';
COMMENT ON COLUMN daily_volume.succeeded IS 'Requests answered with errcode 0.';
COMMENT ON COLUMN daily_volume.failed IS 'Requests answered with an error errcode (see daily_errors for which).';
COMMENT ON COLUMN daily_volume.in_progress IS 'Requests not finished yet.';
COMMENT ON COLUMN daily_volume.matched IS 'Recognitions/verifications answered isMatch "true".';
COMMENT ON COLUMN daily_volume.avg_seconds IS 'Mean seconds from acceptance to answer (finished requests).';
COMMENT ON COLUMN daily_volume.p95_seconds IS '95th percentile of seconds from acceptance to answer.';

CREATE VIEW daily_errors AS
    SELECT date_trunc('day', j.created_at)::date AS day,
           c.name AS client,
           j.kind,
           j.errcode,
           count(*) AS requests,
           min(j.errmsg) AS sample_errmsg
    FROM jobs j JOIN api_clients c ON c.id = j.client_id
    WHERE j.status = 'failed'
    GROUP BY 1, 2, 3, 4;
COMMENT ON VIEW daily_errors IS 'Failed requests per day, client, kind and errcode (errcodes as in README.md).';
COMMENT ON COLUMN daily_errors.day IS 'Day the requests were accepted.';
COMMENT ON COLUMN daily_errors.client IS 'Client name.';
COMMENT ON COLUMN daily_errors.kind IS 'register, recognize or verify.';
COMMENT ON COLUMN daily_errors.errcode IS 'The errcode answered, e.g. 4001 no face, 3003 undecodable image.';
COMMENT ON COLUMN daily_errors.requests IS 'How many requests failed so.';
COMMENT ON COLUMN daily_errors.sample_errmsg IS 'One of the errmsgs answered (they carry no personal data).';

CREATE VIEW job_queue AS
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
           count(*) FILTER (WHERE j.enqueued_at IS NULL) AS not_sent_to_broker,
           count(*) FILTER (WHERE j.status = 'running' AND j.lease_expires_at < now()) AS lease_expired,
           max(j.attempts) AS max_attempts_so_far
    FROM jobs j
    WHERE j.status IN ('queued', 'running')
    GROUP BY 1, 2, 3;
COMMENT ON VIEW job_queue IS 'Jobs waiting or running, by status, kind and age bucket: the queue''s depth and staleness now.';
COMMENT ON COLUMN job_queue.status IS 'queued (waiting for a worker) or running.';
COMMENT ON COLUMN job_queue.kind IS 'register, recognize or verify.';
COMMENT ON COLUMN job_queue.age IS 'Age bucket since acceptance: 0-1 min, 1-5 min, 5-60 min, over 1 h.';
COMMENT ON COLUMN job_queue.jobs IS 'Jobs in the bucket.';
COMMENT ON COLUMN job_queue.oldest_created_at IS 'Acceptance time of the oldest job in the bucket.';
COMMENT ON COLUMN job_queue.oldest_age IS 'Age of that oldest job.';
COMMENT ON COLUMN job_queue.not_sent_to_broker IS 'Jobs whose message has not reached the broker yet (the sweeper re-sends them).';
COMMENT ON COLUMN job_queue.lease_expired IS 'Running jobs whose worker lease expired (worker lost; the sweeper re-sends them).';
COMMENT ON COLUMN job_queue.max_attempts_so_far IS 'Highest attempt count in the bucket (near max_attempts: a job that keeps failing).';

CREATE VIEW callback_failures AS
    SELECT d.id AS delivery_id,
           d.job_id AS task_id,
           c.name AS client,
           d.url,
           d.status,
           d.attempts,
           d.last_http_status,
           d.last_error,
           d.created_at,
           d.next_attempt_at,
           d.dead_at
    FROM callback_deliveries d JOIN api_clients c ON c.id = d.client_id
    WHERE d.status = 'dead' OR (d.status IN ('pending', 'delivering') AND d.attempts > 0);
COMMENT ON VIEW callback_failures IS 'Callback deliveries that failed at least once and are not delivered: retrying (pending) or dead-lettered. Payloads are not shown.';
COMMENT ON COLUMN callback_failures.delivery_id IS 'callback_deliveries.id (clients replay a dead one with POST .../callbacks/<id>/replay).';
COMMENT ON COLUMN callback_failures.task_id IS 'The job whose result is being delivered.';
COMMENT ON COLUMN callback_failures.client IS 'Client that should receive it.';
COMMENT ON COLUMN callback_failures.url IS 'Target URL.';
COMMENT ON COLUMN callback_failures.status IS 'pending (another attempt is due at next_attempt_at), delivering, or dead.';
COMMENT ON COLUMN callback_failures.attempts IS 'Attempts made.';
COMMENT ON COLUMN callback_failures.last_http_status IS 'HTTP status of the last attempt (NULL: no response).';
COMMENT ON COLUMN callback_failures.last_error IS 'Why the last attempt failed.';
COMMENT ON COLUMN callback_failures.created_at IS 'When the job ended and the delivery was created.';
COMMENT ON COLUMN callback_failures.next_attempt_at IS 'When the next attempt is due (pending).';
COMMENT ON COLUMN callback_failures.dead_at IS 'When it was dead-lettered.';

-- The read-only role -----------------------------------------------------------------------------
-- NOLOGIN: DBAs get their own login roles as members of it (CREATE ROLE alice LOGIN IN ROLE
-- faceapi_readonly). Roles are cluster-wide, so the creation is guarded for re-runs and for
-- several databases on one server. It is granted the views only: the views run with their
-- owner's rights, so the role reads persons, faces and jobs through them and never directly
-- (no embeddings, no blind index, no ciphertext, no job inputs).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'faceapi_readonly') THEN
        CREATE ROLE faceapi_readonly NOLOGIN;
        COMMENT ON ROLE faceapi_readonly IS 'faceLib read-only DBA role: SELECT on the DBA views only (docs/dba.md).';
    END IF;
END $$;
GRANT USAGE ON SCHEMA public TO faceapi_readonly;
GRANT SELECT ON person_summary, job_overview, daily_volume, daily_errors, job_queue,
    callback_failures, audit_view TO faceapi_readonly;
