-- Security audit (issue 13): a per-client decision floor, an audit trail that TRUNCATE cannot
-- empty, and an audit view that never shows the idNum blind index.

ALTER TABLE api_clients ADD COLUMN match_floor double precision
    CHECK (match_floor >= 0 AND match_floor <= 100);
COMMENT ON COLUMN api_clients.match_floor IS 'Lowest score at which recong/verify may name a person for this client; a request threshold may only raise it (NULL: FACELIB_MATCH_THRESHOLD).';

-- TRUNCATE fires no row trigger: refuse it with a statement trigger.
CREATE FUNCTION audit_log_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
COMMENT ON FUNCTION audit_log_no_truncate() IS 'Refuses TRUNCATE on audit_log.';
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_no_truncate();

-- A registration's audit row names the person by blind index (b:<hex>) because the person may
-- not exist yet. DBAs see it as p:<person id> once enrolled, and never the index itself.
CREATE OR REPLACE VIEW audit_view AS
    SELECT a.id, a.at, c.name AS client, a.method, a.endpoint,
           CASE WHEN a.person_ref LIKE 'b:%'
                THEN (SELECT 'p:' || p.id FROM persons p
                      WHERE p.id_num_index = decode(substr(a.person_ref, 3), 'hex'))
                ELSE a.person_ref END AS person_ref,
           a.errcode, a.http_status, a.task_id, a.source_ip, a.request_id, a.duration_ms
    FROM audit_log a LEFT JOIN api_clients c ON c.id = a.client_id;
COMMENT ON VIEW audit_view IS 'Audit trail with client names, for DBAs; person_ref is p:<person id> (never the idNum blind index).';

-- Rows of registrations that never enrolled anyone lose their blind index after a grace period
-- (the job has long finished by then); the append-only trigger allows exactly this change.
CREATE INDEX audit_log_blind_ref_idx ON audit_log (at) WHERE person_ref LIKE 'b:%';
CREATE FUNCTION audit_forget_unenrolled(grace interval) RETURNS bigint LANGUAGE sql AS $$
    WITH forgotten AS (
        UPDATE audit_log a SET person_ref = NULL
        WHERE a.person_ref LIKE 'b:%' AND a.at < now() - grace
          AND NOT EXISTS (SELECT 1 FROM persons p
                          WHERE p.id_num_index = decode(substr(a.person_ref, 3), 'hex'))
        RETURNING 1)
    SELECT count(*) FROM forgotten
$$;
COMMENT ON FUNCTION audit_forget_unenrolled(interval) IS 'Clears the blind index of audit rows older than grace whose idNum is not enrolled; returns how many. Called by the API at most hourly.';
SELECT audit_forget_unenrolled(interval '1 day');
