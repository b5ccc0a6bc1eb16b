"""The file server (faceImage.origin = fds): `stores` keeps the objects (a local directory or
S3), `uploads` checks, re-encodes, records, reads, deletes and purges them. The `files` table,
who holds which object, is shared/db/files.py."""
