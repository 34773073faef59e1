"""Stage 2: faces found by a detector become aligned crops (the aligner, alignment specs, the align job)."""
