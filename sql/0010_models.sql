-- Optional embedding models beside dlib's (docs/models.md), and enrolment photos kept encrypted.
--
-- MobileFaceNet's 192-d vector is a nullable column of `faces` with its own HNSW cosine index
-- (NULLs are not indexed: a face enrolled before the model was enabled is simply not in its
-- index until `facelib reembed --model mobilefacenet` fills it in). One column per model keeps
-- recognition a single-table scan, as for dlib's `embedding`. gallery_counts (0008) keeps
-- counting faces whatever their vectors (docs/models.md: galleryFaces).

ALTER TABLE faces ADD COLUMN embedding_mobilefacenet vector(192);
ALTER TABLE faces ADD COLUMN embedding_mobilefacenet_version text;
CREATE INDEX faces_embedding_mobilefacenet_hnsw ON faces
    USING hnsw (embedding_mobilefacenet vector_cosine_ops) WITH (m = 16, ef_construction = 64);
COMMENT ON COLUMN faces.embedding_mobilefacenet IS '192-d unit-norm MobileFaceNet embedding (optional model, docs/models.md); NULL until computed. Searched by cosine distance (HNSW index) when FACELIB_MATCH_MODEL=mobilefacenet.';
COMMENT ON COLUMN faces.image_sha256 IS 'SHA-256 of the enrolment image bytes (the image itself is kept only with FACELIB_KEEP_ENROLMENT_PHOTOS=1, encrypted, in face_photos).';
COMMENT ON COLUMN faces.embedding_mobilefacenet_version IS 'Installed MobileFaceNet version (mobilefacenet/onnx-<hash>) that computed embedding_mobilefacenet.';

CREATE TABLE face_photos (
    face_id         bigint PRIMARY KEY REFERENCES faces (id) ON DELETE CASCADE,
    key_id          text   NOT NULL,
    photo_encrypted bytea  NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE face_photos IS 'Enrolment photos kept for re-embedding with a model enabled later (FACELIB_KEEP_ENROLMENT_PHOTOS=1 only); deleted with the face, hence with the person.';
COMMENT ON COLUMN face_photos.face_id IS 'The face enrolled from this photo.';
COMMENT ON COLUMN face_photos.key_id IS 'Id of the AES-256-GCM key that encrypted the photo (FACELIB_ENCRYPTION_KEY_ID; older ids in FACELIB_ENCRYPTION_KEYS).';
COMMENT ON COLUMN face_photos.photo_encrypted IS 'Nonce (12 bytes) + AES-256-GCM ciphertext of the photo bytes as received; authenticated data: the face id.';
COMMENT ON COLUMN face_photos.created_at IS 'When the photo was stored.';
