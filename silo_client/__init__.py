"""silo_client."""
