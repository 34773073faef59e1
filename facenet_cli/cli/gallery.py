"""`facenet gallery`: placeholder, filled in by the identities work (issue 9)."""
