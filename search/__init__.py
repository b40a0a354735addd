"""ponder.search — the core: contracts, scaling strategies, decoders. Knows no modality."""
