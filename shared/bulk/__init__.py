"""Bulk enrolment: register many persons from a CSV file or a folder of photos.

Rows go through the same queue as the API's `reg` (`shared.jobs.submit_job`, origin self), so
the import scales with the workers and gets the same checks and errcodes. Rows are submitted
asynchronously, at most `in_flight` at a time, and their jobs are followed in the jobs table.

Resumable: each row's requestId is derived from its idNum and image (`persons.bulk_request_ids`),
so a second run finds the first run's jobs: a row already enrolled is skipped, one still queued
is waited for, one that failed for good is reported again without being resubmitted, and one
that failed for a transient reason (6003, 9001...) is submitted again under its next requestId.
No row is ever enrolled twice.

The report (CSV) lists every row not enrolled, with its line, errcode and errmsg; it holds the
masked idNum only.

    facelib bulk --client branch-0001 --csv people.csv [--report failures.csv]
    facelib bulk --client branch-0001 --folder photos/ [--synthetic-idnums]

CSV columns: idNum,name,personType,customerID,image (image: a path, relative to the CSV file).
Folder: one entry per person, a photo or a sub-folder (its first photo), named
`<idNum>[_<name>]`; with --synthetic-idnums (demonstrations only) any name is accepted and a
valid idNum is made up from it.

Modules: `inputs` reads the rows (CSV, folder), `prepare` checks a row as the API checks a reg
request and reads its image, `runner` submits rows and follows their jobs (`enrol`, the
`facelib bulk` command), `report` writes the rows not enrolled.
"""
