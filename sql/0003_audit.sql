-- Audit trail: one row per API request. Append-only: a trigger refuses UPDATE and DELETE, except
-- the erasure of a person (person_ref set to NULL), so erasure leaves no link to the person.

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    client_id   bigint,
    method      text NOT NULL,
    endpoint    text NOT NULL,
    person_ref  text,
    errcode     integer NOT NULL,
    http_status integer NOT NULL,
    task_id     uuid,
    source_ip   inet,
    request_id  text,
    duration_ms integer NOT NULL
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_client_at_idx ON audit_log (client_id, at);
CREATE INDEX audit_log_person_ref_idx ON audit_log (person_ref) WHERE person_ref IS NOT NULL;
COMMENT ON TABLE audit_log IS 'Append-only record of every API request: who, what, when, outcome. No raw idNum, name or image.';
COMMENT ON COLUMN audit_log.id IS 'Surrogate key, increasing.';
COMMENT ON COLUMN audit_log.at IS 'When the request arrived.';
COMMENT ON COLUMN audit_log.client_id IS 'The authenticated client (NULL when authentication failed).';
COMMENT ON COLUMN audit_log.method IS 'HTTP method.';
COMMENT ON COLUMN audit_log.endpoint IS 'Route pattern, e.g. /tech/ai/face/faceLib/person/reg (no ids or query values).';
COMMENT ON COLUMN audit_log.person_ref IS 'The person concerned: p:<person id>, or b:<hex blind index of the idNum>; never the raw idNum.';
COMMENT ON COLUMN audit_log.errcode IS 'The envelope errcode answered (0 = success).';
COMMENT ON COLUMN audit_log.http_status IS 'The HTTP status answered.';
COMMENT ON COLUMN audit_log.task_id IS 'The job created or read, if any.';
COMMENT ON COLUMN audit_log.source_ip IS 'Client IP address as seen by the API.';
COMMENT ON COLUMN audit_log.request_id IS 'X-Request-Id of the request (also in the logs).';
COMMENT ON COLUMN audit_log.duration_ms IS 'Time to answer, in milliseconds.';

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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
COMMENT ON FUNCTION audit_log_append_only() IS 'Refuses UPDATE/DELETE on audit_log except clearing person_ref (erasure).';
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE VIEW audit_view AS
    SELECT a.id, a.at, c.name AS client, a.method, a.endpoint, a.person_ref, a.errcode,
           a.http_status, a.task_id, a.source_ip, a.request_id, a.duration_ms
    FROM audit_log a LEFT JOIN api_clients c ON c.id = a.client_id;
COMMENT ON VIEW audit_view IS 'Audit trail with client names, for DBAs.';
