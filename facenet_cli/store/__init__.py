"""Gallery stores: people, faces and their embeddings, with nearest-neighbour search."""
