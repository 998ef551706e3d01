"""multimodal_ssl.losses."""
