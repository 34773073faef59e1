"""Model records (the catalogue), weights download and cache (hub), the files each model needs."""
