"""multimodal_ssl.models."""
