"""Object storage (S3-compatible, boto3): where export bodies and large drafts are kept.

Not a dropzone: the worker keeps its own copy of each export here and streams
it to the ERP's dropzone from here. ``store`` is the bucket, ``errors`` what
a store's error means, ``streams`` the verified request body.
"""

from dropzone.object_store.store import (
    DEFAULT_CHUNK,
    KEY_PREFIXES,
    MAX_OBJECT_BYTES,
    ObjectInfo,
    ObjectStore,
    validate_key,
)

__all__ = ["DEFAULT_CHUNK", "KEY_PREFIXES", "MAX_OBJECT_BYTES", "ObjectInfo", "ObjectStore", "validate_key"]
