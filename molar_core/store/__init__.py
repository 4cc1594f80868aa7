"""The item-embedding cache: safetensors shards keyed by content hash, a manifest with checksums, readers."""

from molar_core.store.cache import EmbeddingCache
from molar_core.store.manifest import Manifest, read_manifest
from molar_core.store.reader import load_item_embeddings, lookup_vectors, open_manifest, read_catalogue
from molar_core.store.update import UpdateReport, update_embeddings

__all__ = ["EmbeddingCache", "Manifest", "UpdateReport", "load_item_embeddings", "lookup_vectors", "open_manifest",
           "read_catalogue", "read_manifest", "update_embeddings"]
