"""The feature store: Parquet shards of per-clip features (``features``), read one video at a time by row group
(``lookup``), on a local disk or an object store (``object_store``). DESIGN.md section 3."""

from drn.store.features import (
    DEFAULT_MAX_CHUNK_BYTES,
    METADATA_PREFIX,
    VIDEO_STATUSES,
    VIDEOS_SCHEMA,
    FeatureStore,
    FeatureStoreWriter,
    StoreMetadata,
    VideoFeatures,
    VideoRecord,
    absolute_uri,
    check_store_location,
    clips_schema,
    existing_metadata,
    load_each,
    new_shard_name,
    writer_memory_pool,
)
from drn.store.lookup import VideoLookup
from drn.store.object_store import filesystem_for

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES", "METADATA_PREFIX", "VIDEO_STATUSES", "VIDEOS_SCHEMA", "FeatureStore",
    "FeatureStoreWriter", "StoreMetadata", "VideoFeatures", "VideoLookup", "VideoRecord", "absolute_uri",
    "check_store_location", "clips_schema", "existing_metadata", "filesystem_for", "load_each", "new_shard_name",
    "writer_memory_pool",
]
