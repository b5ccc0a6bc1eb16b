-- Search at scale (docs/scaling.md).
--
-- 1. The HNSW index holds the embeddings as halfvec: half the size (about 540 MB instead of
--    800 MB per million faces), so the pages a search touches stay in shared_buffers, and a
--    faster build. The table keeps float32 vectors: the repository re-ranks the index's
--    candidates by their exact distance (shared/repo.py nearest_faces). Same index name, so
--    `facelib reindex` and the DBA views find it; rebuilding it here takes minutes on a large
--    library (see docs/scaling.md for building it CONCURRENTLY beforehand instead).
DROP INDEX IF EXISTS faces_embedding_hnsw;
CREATE INDEX faces_embedding_hnsw ON faces
    USING hnsw ((embedding::halfvec(128)) halfvec_cosine_ops) WITH (m = 32, ef_construction = 64);
COMMENT ON INDEX faces_embedding_hnsw IS 'Face search: HNSW over the embeddings as halfvec (cosine); candidates are re-ranked with the exact float32 distance. Rebuilt by facelib reindex.';

-- 2. Gallery counters per statement on insert, so that a COPY of many faces (the bulk path,
--    repo.add_faces_bulk) updates each counter row once instead of once per face (sql/0008's
--    row trigger). Deletions keep the row trigger.
DROP TRIGGER faces_gallery_counts ON faces;
CREATE TRIGGER faces_gallery_counts AFTER DELETE ON faces
    FOR EACH ROW EXECUTE FUNCTION gallery_counts_faces_trg();

CREATE FUNCTION gallery_counts_faces_insert_trg() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT 0::bigint AS library_id, p.person_type, count(*) AS n
          FROM new_faces f JOIN persons p ON p.id = f.person_id
         GROUP BY p.person_type
        UNION ALL
        SELECT pl.library_id, p.person_type, count(*)
          FROM new_faces f JOIN persons p ON p.id = f.person_id
          JOIN person_libraries pl ON pl.person_id = f.person_id
         GROUP BY pl.library_id, p.person_type
         ORDER BY 1, 2  -- one lock order for concurrent enrolments
    LOOP
        PERFORM gallery_counts_add(c.library_id, c.person_type, c.n);
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION gallery_counts_faces_insert_trg() IS 'Adds the faces inserted by one statement to gallery_counts, one update per (library, person type).';
CREATE TRIGGER faces_gallery_counts_insert AFTER INSERT ON faces
    REFERENCING NEW TABLE AS new_faces
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_counts_faces_insert_trg();
