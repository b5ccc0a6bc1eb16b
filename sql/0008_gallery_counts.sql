-- Gallery sizes kept transactionally, so that recognition never runs count(*) over faces.
--
-- recong's falseMatchRate needs how many faces a search compares the probe with: the whole
-- library, one sub-library, one or more person types, or a combination. Triggers on faces,
-- persons and person_libraries keep one counter row per (library, person type), library 0
-- standing for "every face, whatever its libraries", in the same transaction as the change.
-- gallery_counts_rebuild() recomputes every row from the tables (for a DBA's check or repair).

CREATE TABLE gallery_counts (
    library_id  bigint NOT NULL,
    person_type text   NOT NULL CHECK (person_type IN ('normal', 'vip', 'inner')),
    faces       bigint NOT NULL DEFAULT 0 CHECK (faces >= 0),
    PRIMARY KEY (library_id, person_type)
);
COMMENT ON TABLE gallery_counts IS 'Number of enrolled faces per (library, person type), maintained by triggers; read by recognition for falseMatchRate instead of count(*).';
COMMENT ON COLUMN gallery_counts.library_id IS 'libraries.id, or 0 for all faces whatever their libraries.';
COMMENT ON COLUMN gallery_counts.person_type IS 'The person type of the faces counted.';
COMMENT ON COLUMN gallery_counts.faces IS 'How many faces of persons of this type are in this library.';

CREATE FUNCTION gallery_counts_add(p_library bigint, p_type text, p_delta bigint)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO gallery_counts AS g (library_id, person_type, faces)
    VALUES (p_library, p_type, greatest(p_delta, 0))
    ON CONFLICT (library_id, person_type) DO UPDATE SET faces = g.faces + p_delta;
$$;
COMMENT ON FUNCTION gallery_counts_add(bigint, text, bigint) IS 'Adds a delta to one gallery_counts row (creating it).';

-- Add `delta` faces of one person to library 0 and to each library the person is in.
CREATE FUNCTION gallery_counts_person(p_person bigint, p_type text, p_delta bigint)
RETURNS void LANGUAGE sql AS $$
    SELECT gallery_counts_add(0, p_type, p_delta);
    SELECT gallery_counts_add(pl.library_id, p_type, p_delta)
      FROM person_libraries pl WHERE pl.person_id = p_person
     ORDER BY pl.library_id;  -- one lock order for concurrent enrolments
$$;
COMMENT ON FUNCTION gallery_counts_person(bigint, text, bigint) IS 'Adds a person''s face delta to library 0 and to each of the person''s libraries.';

CREATE FUNCTION gallery_counts_faces_trg() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ptype text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT person_type INTO ptype FROM persons WHERE id = NEW.person_id;
        PERFORM gallery_counts_person(NEW.person_id, ptype, 1);
        RETURN NEW;
    END IF;
    -- DELETE: when the person itself is being deleted, its BEFORE DELETE trigger has already
    -- taken all its faces off, and the person row is no longer visible here.
    SELECT person_type INTO ptype FROM persons WHERE id = OLD.person_id;
    IF FOUND THEN
        PERFORM gallery_counts_person(OLD.person_id, ptype, -1);
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER faces_gallery_counts AFTER INSERT OR DELETE ON faces
    FOR EACH ROW EXECUTE FUNCTION gallery_counts_faces_trg();

CREATE FUNCTION gallery_counts_faces_update_trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'faces.person_id cannot change (delete the face and enrol it again)';
END $$;
CREATE TRIGGER faces_person_fixed BEFORE UPDATE OF person_id ON faces
    FOR EACH ROW WHEN (OLD.person_id IS DISTINCT FROM NEW.person_id)
    EXECUTE FUNCTION gallery_counts_faces_update_trg();

CREATE FUNCTION gallery_counts_persons_trg() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM faces WHERE person_id = OLD.id;
    IF n = 0 THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    PERFORM gallery_counts_person(OLD.id, OLD.person_type, -n);
    IF TG_OP = 'UPDATE' THEN
        PERFORM gallery_counts_person(NEW.id, NEW.person_type, n);
        RETURN NEW;
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER persons_gallery_counts_delete BEFORE DELETE ON persons
    FOR EACH ROW EXECUTE FUNCTION gallery_counts_persons_trg();
CREATE TRIGGER persons_gallery_counts_type AFTER UPDATE OF person_type ON persons
    FOR EACH ROW WHEN (OLD.person_type IS DISTINCT FROM NEW.person_type)
    EXECUTE FUNCTION gallery_counts_persons_trg();

CREATE FUNCTION gallery_counts_memberships_trg() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ptype text;
    n bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT p.person_type, (SELECT count(*) FROM faces f WHERE f.person_id = p.id)
          INTO ptype, n FROM persons p WHERE p.id = NEW.person_id;
        IF n > 0 THEN
            PERFORM gallery_counts_add(NEW.library_id, ptype, n);
        END IF;
        RETURN NEW;
    END IF;
    -- DELETE: skipped when the person is being deleted (already counted off) or the library is
    -- (its rows go with it).
    SELECT p.person_type, (SELECT count(*) FROM faces f WHERE f.person_id = p.id)
      INTO ptype, n FROM persons p WHERE p.id = OLD.person_id;
    IF FOUND AND n > 0 AND EXISTS (SELECT 1 FROM libraries WHERE id = OLD.library_id) THEN
        PERFORM gallery_counts_add(OLD.library_id, ptype, -n);
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER person_libraries_gallery_counts AFTER INSERT OR DELETE ON person_libraries
    FOR EACH ROW EXECUTE FUNCTION gallery_counts_memberships_trg();

CREATE FUNCTION gallery_counts_libraries_trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM gallery_counts WHERE library_id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER libraries_gallery_counts AFTER DELETE ON libraries
    FOR EACH ROW EXECUTE FUNCTION gallery_counts_libraries_trg();

CREATE FUNCTION gallery_counts_rebuild() RETURNS void LANGUAGE sql AS $$
    LOCK TABLE faces, persons, person_libraries IN SHARE MODE;
    DELETE FROM gallery_counts;
    INSERT INTO gallery_counts (library_id, person_type, faces)
        SELECT 0, p.person_type, count(*) FROM faces f JOIN persons p ON p.id = f.person_id
         GROUP BY p.person_type;
    INSERT INTO gallery_counts (library_id, person_type, faces)
        SELECT pl.library_id, p.person_type, count(*)
          FROM faces f JOIN persons p ON p.id = f.person_id
          JOIN person_libraries pl ON pl.person_id = f.person_id
         GROUP BY pl.library_id, p.person_type;
$$;
COMMENT ON FUNCTION gallery_counts_rebuild() IS 'Recomputes gallery_counts from faces, persons and person_libraries (a check or repair; locks those tables against writes while it runs).';

SELECT gallery_counts_rebuild();

-- For DBAs: the counters by library name; the read-only role reads views only (sql/0004_dba.sql).
CREATE VIEW gallery_sizes AS
    SELECT CASE WHEN g.library_id = 0 THEN '(all faces)' ELSE l.lib_id END AS library,
           g.person_type, g.faces
      FROM gallery_counts g LEFT JOIN libraries l ON l.id = g.library_id;
COMMENT ON VIEW gallery_sizes IS 'Faces per library and person type, as recognition counts them (library "(all faces)": the whole library).';
GRANT SELECT ON gallery_sizes TO faceapi_readonly;
