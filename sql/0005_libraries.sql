-- Sub-libraries (per branch, region, staff vs customers...), 1:1 verification jobs, per-client
-- gallery targets.

CREATE TABLE libraries (
    id          bigserial PRIMARY KEY,
    lib_id      text NOT NULL UNIQUE,
    name        text NOT NULL DEFAULT '',
    created_by  bigint REFERENCES api_clients(id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE libraries IS 'Sub-libraries of persons (e.g. per branch or region); a person can be in several.';
COMMENT ON COLUMN libraries.id IS 'Surrogate key.';
COMMENT ON COLUMN libraries.lib_id IS 'The libId clients use (letters, digits, - and _).';
COMMENT ON COLUMN libraries.name IS 'Human-readable name.';
COMMENT ON COLUMN libraries.created_by IS 'The client that created it.';
COMMENT ON COLUMN libraries.created_at IS 'When it was created.';
INSERT INTO libraries (lib_id, name) VALUES ('default', 'Default library');

CREATE TABLE person_libraries (
    person_id   bigint NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    library_id  bigint NOT NULL REFERENCES libraries(id) ON DELETE CASCADE,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (person_id, library_id)
);
CREATE INDEX person_libraries_library_idx ON person_libraries (library_id, person_id);
COMMENT ON TABLE person_libraries IS 'Membership of persons in libraries.';
COMMENT ON COLUMN person_libraries.person_id IS 'The person.';
COMMENT ON COLUMN person_libraries.library_id IS 'The library.';
COMMENT ON COLUMN person_libraries.added_at IS 'When the person joined the library.';

-- Every person enrolled before libraries existed belongs to the default library.
INSERT INTO person_libraries (person_id, library_id)
    SELECT p.id, l.id FROM persons p, libraries l WHERE l.lib_id = 'default';

ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('register', 'recognize', 'verify'));
COMMENT ON COLUMN jobs.kind IS 'register (reg), recognize (recong) or verify (1:1 verify).';

ALTER TABLE api_clients ADD COLUMN gallery_target double precision
    CHECK (gallery_target > 0 AND gallery_target < 1);
COMMENT ON COLUMN api_clients.gallery_target IS 'Gallery-mode target false-match rate for this client (NULL: the service default).';
