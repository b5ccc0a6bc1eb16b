-- Images and ciphertexts are stored without a compression attempt.
--
-- PostgreSQL tries to compress every value over ~2 KB before moving it out of line (TOAST).
-- JPEG/PNG bytes and AES-GCM ciphertexts do not compress, so that attempt is pure CPU on the
-- accept path: per accepted job it cost PostgreSQL 4.6–5.1 ms of CPU against 2.0–2.5 ms
-- without it (issue #16; `scripts/bench_accept.py` prints the server CPU per request).
-- EXTERNAL keeps out-of-line storage (the row stays small) and skips compression. Only values
-- written from now on are affected; nothing is rewritten.

ALTER TABLE job_inputs ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE face_photos ALTER COLUMN photo_encrypted SET STORAGE EXTERNAL;
