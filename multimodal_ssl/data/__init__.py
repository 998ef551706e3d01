"""multimodal_ssl.data."""
