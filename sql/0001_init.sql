-- faceLib schema, first version. Applied by `facelib migrate` (shared/migrate.py), once.
-- Every table and column carries a COMMENT: DBAs read this schema with \d+.

CREATE EXTENSION IF NOT EXISTS vector;

-- API clients and their tokens ---------------------------------------------------------------
CREATE TABLE api_clients (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL UNIQUE,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    scopes           text[] NOT NULL DEFAULT ARRAY['face:register', 'face:recognize']::text[],
    client_key       text UNIQUE,
    secret_hash      bytea,
    callback_url     text,
    callback_secret  text NOT NULL,
    callback_secret_previous text,
    rate_limit       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE api_clients IS 'Client systems (one per bank branch or calling system) allowed to call the API.';
COMMENT ON COLUMN api_clients.id IS 'Surrogate key.';
COMMENT ON COLUMN api_clients.name IS 'Human-readable unique client name, e.g. a branch code.';
COMMENT ON COLUMN api_clients.status IS 'active: may call the API; disabled: every token of the client is refused.';
COMMENT ON COLUMN api_clients.scopes IS 'Scopes granted: face:register, face:recognize, person:read, person:write, file:write, admin.';
COMMENT ON COLUMN api_clients.client_key IS 'Public key id used with the client secret to obtain tokens.';
COMMENT ON COLUMN api_clients.secret_hash IS 'SHA-256 of the client secret (the secret itself is never stored).';
COMMENT ON COLUMN api_clients.callback_url IS 'Default URL that receives async results when a request names none.';
COMMENT ON COLUMN api_clients.callback_secret IS 'Standard Webhooks signing secret (whsec_...) for this client''s callbacks.';
COMMENT ON COLUMN api_clients.callback_secret_previous IS 'Previous signing secret, still used to sign during a rotation.';
COMMENT ON COLUMN api_clients.rate_limit IS 'Per-client rate limit, e.g. "50/second"; NULL means the service default.';
COMMENT ON COLUMN api_clients.created_at IS 'When the client was created.';
COMMENT ON COLUMN api_clients.updated_at IS 'When the client was last changed.';

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    client_id    bigint NOT NULL REFERENCES api_clients(id) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,
    token_prefix text NOT NULL,
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE api_tokens IS 'Bearer tokens issued to clients. Only a SHA-256 hash of each token is stored.';
COMMENT ON COLUMN api_tokens.id IS 'Surrogate key.';
COMMENT ON COLUMN api_tokens.client_id IS 'The client the token belongs to.';
COMMENT ON COLUMN api_tokens.token_hash IS 'SHA-256 of the full token string.';
COMMENT ON COLUMN api_tokens.token_prefix IS 'First characters of the token (flt_xxxx), to recognise it in support cases; not a secret.';
COMMENT ON COLUMN api_tokens.expires_at IS 'After this instant the token is refused (errcode 1003).';
COMMENT ON COLUMN api_tokens.revoked_at IS 'Set when the token is revoked; refused at once from then on.';
COMMENT ON COLUMN api_tokens.last_used_at IS 'Last time a request authenticated with this token (updated at most once a minute).';
COMMENT ON COLUMN api_tokens.created_at IS 'When the token was issued.';

-- Persons and faces ---------------------------------------------------------------------------
CREATE TABLE persons (
    id               bigserial PRIMARY KEY,
    id_num_index     bytea NOT NULL UNIQUE,
    id_num_encrypted bytea NOT NULL,
    id_num_key_id    text NOT NULL,
    id_num_masked    text NOT NULL,
    name             text NOT NULL,
    person_type      text NOT NULL CHECK (person_type IN ('normal', 'vip', 'inner')),
    customer_id      text NOT NULL DEFAULT '',
    created_by       bigint REFERENCES api_clients(id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE persons IS 'Verified persons enrolled in the face library (customers and staff).';
COMMENT ON COLUMN persons.id IS 'Surrogate key; other tables refer to persons by it, never by idNum.';
COMMENT ON COLUMN persons.id_num_index IS 'Blind index of the ID number: HMAC-SHA256(index key, idNum). Unique; used for lookup.';
COMMENT ON COLUMN persons.id_num_encrypted IS 'The ID number encrypted with AES-256-GCM (12-byte nonce || ciphertext+tag).';
COMMENT ON COLUMN persons.id_num_key_id IS 'Id of the encryption key used for id_num_encrypted (for key rotation).';
COMMENT ON COLUMN persons.id_num_masked IS 'The ID number masked for display: first 3 and last 3 characters, e.g. 610************019.';
COMMENT ON COLUMN persons.name IS 'Full name as verified at enrolment.';
COMMENT ON COLUMN persons.person_type IS 'normal: ordinary customer; vip: premium customer; inner: staff.';
COMMENT ON COLUMN persons.customer_id IS 'The bank''s customer number, empty when not given.';
COMMENT ON COLUMN persons.created_by IS 'The API client that first enrolled the person.';
COMMENT ON COLUMN persons.created_at IS 'When the person was first enrolled.';
COMMENT ON COLUMN persons.updated_at IS 'When the person''s record was last changed.';

CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('register', 'recognize')),
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    client_id     bigint NOT NULL REFERENCES api_clients(id) ON DELETE CASCADE,
    request_id    text,
    request_hash  bytea NOT NULL,
    request_meta  jsonb NOT NULL DEFAULT '{}'::jsonb,
    callback_url  text,
    result        jsonb,
    errcode       integer,
    errmsg        text,
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 3,
    lease_expires_at timestamptz,
    enqueued_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    timings       jsonb,
    UNIQUE (client_id, request_id)
);
CREATE INDEX jobs_status_created_idx ON jobs (status, created_at) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_created_idx ON jobs (created_at);
COMMENT ON TABLE jobs IS 'Every reg/recong request, sync or async: its state, result and errcode. Images and personal data are not kept here.';
COMMENT ON COLUMN jobs.id IS 'The taskId returned to clients.';
COMMENT ON COLUMN jobs.kind IS 'register (reg endpoint) or recognize (recong endpoint).';
COMMENT ON COLUMN jobs.status IS 'queued -> running -> done | failed.';
COMMENT ON COLUMN jobs.client_id IS 'The client that submitted the job; only it can read the job.';
COMMENT ON COLUMN jobs.request_id IS 'Client idempotency key (requestId field or Idempotency-Key header), unique per client.';
COMMENT ON COLUMN jobs.request_hash IS 'SHA-256 of the canonical request body, to refuse a reused requestId with another body.';
COMMENT ON COLUMN jobs.request_meta IS 'Request parameters without personal data or image: async, origin, image size, person id.';
COMMENT ON COLUMN jobs.callback_url IS 'Where the result is POSTed when the job ends (async requests).';
COMMENT ON COLUMN jobs.result IS 'The data object of the response envelope once done.';
COMMENT ON COLUMN jobs.errcode IS 'The envelope errcode once finished (0 on success).';
COMMENT ON COLUMN jobs.errmsg IS 'The envelope errmsg once finished.';
COMMENT ON COLUMN jobs.attempts IS 'How many times a worker started this job.';
COMMENT ON COLUMN jobs.max_attempts IS 'Cap on attempts; past it the job fails with errcode 6003.';
COMMENT ON COLUMN jobs.lease_expires_at IS 'While running: when the worker''s lease ends; the sweeper re-sends jobs whose lease expired.';
COMMENT ON COLUMN jobs.enqueued_at IS 'When the job message was last handed to the broker (NULL: not yet; the sweeper re-sends).';
COMMENT ON COLUMN jobs.created_at IS 'When the request was accepted.';
COMMENT ON COLUMN jobs.started_at IS 'When a worker last started it.';
COMMENT ON COLUMN jobs.finished_at IS 'When it reached done or failed.';
COMMENT ON COLUMN jobs.timings IS 'Seconds spent per stage: queue_wait, decode, detect, embed, db.';

CREATE TABLE job_inputs (
    job_id   uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    origin   text NOT NULL CHECK (origin IN ('self', 'fds', 'uri')),
    data     bytea,
    ref      text,
    id_num_encrypted bytea,
    person   jsonb
);
COMMENT ON TABLE job_inputs IS 'What a job needs while it waits for a worker (image, person fields); deleted when the job ends.';
COMMENT ON COLUMN job_inputs.job_id IS 'The job.';
COMMENT ON COLUMN job_inputs.origin IS 'self: image bytes in data; fds: file-server path in ref; uri: URL in ref.';
COMMENT ON COLUMN job_inputs.data IS 'Decoded image bytes (origin self).';
COMMENT ON COLUMN job_inputs.ref IS 'File-server path or URL (origins fds and uri).';
COMMENT ON COLUMN job_inputs.id_num_encrypted IS 'Registration: the idNum, AES-256-GCM encrypted like persons.id_num_encrypted.';
COMMENT ON COLUMN job_inputs.person IS 'Registration: name, personType, customerID as sent.';

CREATE TABLE faces (
    id          bigserial PRIMARY KEY,
    person_id   bigint NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    embedding   vector(128) NOT NULL,
    box         integer[] NOT NULL,
    quality     jsonb NOT NULL DEFAULT '{}'::jsonb,
    model       text NOT NULL,
    backend     text NOT NULL,
    job_id      uuid UNIQUE,
    image_sha256 bytea,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX faces_person_idx ON faces (person_id);
CREATE INDEX faces_embedding_hnsw ON faces USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
COMMENT ON TABLE faces IS 'Face embeddings of enrolled persons (up to FACELIB_FACES_PER_PERSON each).';
COMMENT ON COLUMN faces.id IS 'Surrogate key.';
COMMENT ON COLUMN faces.person_id IS 'The person this face belongs to; deleting the person deletes the faces.';
COMMENT ON COLUMN faces.embedding IS '128-d unit-norm dlib ResNet descriptor; searched by cosine distance (HNSW index).';
COMMENT ON COLUMN faces.box IS 'Face box in the enrolment photo: left, top, right, bottom (pixels).';
COMMENT ON COLUMN faces.quality IS 'Quality figures measured at enrolment: size_px, blur, pose.';
COMMENT ON COLUMN faces.model IS 'Embedding model name and version, so a model change can re-embed.';
COMMENT ON COLUMN faces.backend IS 'Backend that computed the embedding (dlib or onnx) and its version.';
COMMENT ON COLUMN faces.job_id IS 'The registration job that created the face; unique, so a redelivered job never adds a second face.';
COMMENT ON COLUMN faces.image_sha256 IS 'SHA-256 of the enrolment image bytes (the image itself is not kept).';
COMMENT ON COLUMN faces.created_at IS 'When the face was enrolled.';

-- Callbacks -------------------------------------------------------------------------------------
CREATE TABLE callback_deliveries (
    id              bigserial PRIMARY KEY,
    job_id          uuid NOT NULL UNIQUE REFERENCES jobs(id) ON DELETE CASCADE,
    client_id       bigint NOT NULL REFERENCES api_clients(id) ON DELETE CASCADE,
    url             text NOT NULL,
    webhook_id      text NOT NULL UNIQUE,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivering', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    last_http_status integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    dead_at         timestamptz
);
CREATE INDEX callback_deliveries_due_idx ON callback_deliveries (next_attempt_at) WHERE status = 'pending';
COMMENT ON TABLE callback_deliveries IS 'One row per async result to POST to a client (Standard Webhooks signed), with its retry state.';
COMMENT ON COLUMN callback_deliveries.id IS 'Surrogate key.';
COMMENT ON COLUMN callback_deliveries.job_id IS 'The job whose result is delivered.';
COMMENT ON COLUMN callback_deliveries.client_id IS 'The client that receives it.';
COMMENT ON COLUMN callback_deliveries.url IS 'Target URL.';
COMMENT ON COLUMN callback_deliveries.webhook_id IS 'The webhook-id header: the same on every retry, so receivers can deduplicate.';
COMMENT ON COLUMN callback_deliveries.payload IS 'The JSON body POSTed (the response envelope plus taskId and requestId).';
COMMENT ON COLUMN callback_deliveries.status IS 'pending (waiting for next_attempt_at), delivering, delivered (2xx received) or dead (attempts exhausted).';
COMMENT ON COLUMN callback_deliveries.attempts IS 'Attempts made so far.';
COMMENT ON COLUMN callback_deliveries.next_attempt_at IS 'When the next attempt is due (pending only).';
COMMENT ON COLUMN callback_deliveries.claimed_at IS 'When a worker last took the delivery for an attempt (a stale claim is released).';
COMMENT ON COLUMN callback_deliveries.last_http_status IS 'HTTP status of the last attempt (NULL if no response).';
COMMENT ON COLUMN callback_deliveries.last_error IS 'Error of the last attempt (timeout, connection refused, non-2xx).';
COMMENT ON COLUMN callback_deliveries.created_at IS 'When the delivery was created (job end).';
COMMENT ON COLUMN callback_deliveries.delivered_at IS 'When a 2xx was received.';
COMMENT ON COLUMN callback_deliveries.dead_at IS 'When it was dead-lettered after its last attempt.';

CREATE TABLE callback_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES callback_deliveries(id) ON DELETE CASCADE,
    attempt_no   integer NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    http_status  integer,
    error        text,
    duration_ms  integer,
    UNIQUE (delivery_id, attempt_no)
);
COMMENT ON TABLE callback_attempts IS 'Every callback POST made, successful or not.';
COMMENT ON COLUMN callback_attempts.id IS 'Surrogate key.';
COMMENT ON COLUMN callback_attempts.delivery_id IS 'The delivery this attempt belongs to.';
COMMENT ON COLUMN callback_attempts.attempt_no IS '1 for the first attempt, then 2, 3, ... (continues across replays).';
COMMENT ON COLUMN callback_attempts.attempted_at IS 'When the POST was made.';
COMMENT ON COLUMN callback_attempts.http_status IS 'HTTP status received, NULL when no response.';
COMMENT ON COLUMN callback_attempts.error IS 'Why the attempt failed, NULL on 2xx.';
COMMENT ON COLUMN callback_attempts.duration_ms IS 'Round-trip time of the attempt.';
