"""Use cases on embeddings: compare, identify and search against a gallery, cluster, and the
gallery's own (enrol.py: `gallery add`; gallery_admin.py: export, list, remove, move)."""
