"""One face pipeline: photos -> faces -> aligned crops -> embeddings, used by every command."""
