"""Gallery stores: people, faces and their embeddings, with nearest-neighbour search.

protocol.py (`GalleryStore`: the methods every backend offers) and types.py (the values they
hand out), registry.py (`open_store(location)`: a backend registers itself for the locations it
takes), sqlite.py (the SQLite file, `Gallery`; with sqlite_file.py, sqlite_errors.py and
migrations.py, its numbered schema migrations), face_index.py and thumbs.py (what the SQLite
store keeps beside its file), names.py (people's names and face ids, as every backend checks
them). Nothing here knows photos or networks: the use cases (recognition/enrol.py, ...) do.
"""
