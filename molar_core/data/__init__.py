"""Dataset adapters, processing (filtering, k-core, ids, split) and item text rendering."""
