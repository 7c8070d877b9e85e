"""HTTP APIs: the app API (/app/v1), the gateway API (/gateway/v1), health and OpenAPI."""
