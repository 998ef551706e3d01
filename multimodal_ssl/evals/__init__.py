"""multimodal_ssl.evals."""
