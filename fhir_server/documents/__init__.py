"""Documents: the bytes of Binary resources in an object store (S3 or the filesystem), addressed by SHA-256.

PostgreSQL keeps the Binary resource (with the content hash in an extension of `Binary.data`) and one
`document_object` row per stored object; the bytes never go there. See `store` for the stores, `content`
for streaming and hashing, `mime` for content-type checks, `hooks` for what writes of Binary and
DocumentReference do, and `gc` for removing objects no version references.
"""
