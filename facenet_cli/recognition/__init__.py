"""Use cases on embeddings: compare, identify and search against a gallery, cluster."""
