-- The file server (faceImage.origin = fds): uploaded images, content-addressed.
-- The bytes live in the file store (a local directory or S3-compatible object storage) under
-- `path` = '<sha256 hex>.jpg'; one stored object may belong to several clients (one row each).

CREATE TABLE files (
    id            bigserial PRIMARY KEY,
    client_id     bigint NOT NULL REFERENCES api_clients(id) ON DELETE CASCADE,
    path          text NOT NULL CHECK (path ~ '^[0-9a-f]{64}\.jpg$'),
    sha256        bytea NOT NULL CHECK (length(sha256) = 32),
    size_bytes    integer NOT NULL CHECK (size_bytes > 0),
    original_size_bytes integer NOT NULL CHECK (original_size_bytes > 0),
    width         integer NOT NULL CHECK (width > 0),
    height        integer NOT NULL CHECK (height > 0),
    content_type  text NOT NULL DEFAULT 'image/jpeg',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (client_id, path)
);
CREATE INDEX files_path_idx ON files (path);
CREATE INDEX files_last_used_idx ON files (last_used_at);
COMMENT ON TABLE files IS 'Images uploaded to the file server (POST /tech/file/upload), one row per owning client; used by reg/recong with faceImage.origin = fds and purged when unused past FACELIB_FILE_RETENTION_DAYS.';
COMMENT ON COLUMN files.id IS 'Surrogate key.';
COMMENT ON COLUMN files.client_id IS 'The client that uploaded the file; only it can use, download or delete it.';
COMMENT ON COLUMN files.path IS 'The opaque path clients send as faceImage.data: <sha256 hex of the stored bytes>.jpg; also the key in the file store.';
COMMENT ON COLUMN files.sha256 IS 'SHA-256 of the stored (re-encoded) bytes; equal uploads share one stored object.';
COMMENT ON COLUMN files.size_bytes IS 'Size of the stored JPEG in bytes.';
COMMENT ON COLUMN files.original_size_bytes IS 'Size of the image as uploaded, before downscaling and re-encoding.';
COMMENT ON COLUMN files.width IS 'Width of the stored image in pixels (upright, after EXIF rotation and downscaling).';
COMMENT ON COLUMN files.height IS 'Height of the stored image in pixels.';
COMMENT ON COLUMN files.content_type IS 'MIME type of the stored bytes (always image/jpeg: uploads are re-encoded).';
COMMENT ON COLUMN files.created_at IS 'When the client first uploaded this image.';
COMMENT ON COLUMN files.last_used_at IS 'Last upload of the same image or last job that read it; the retention purge counts from here.';
