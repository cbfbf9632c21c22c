"""The HTTP face: routes, request schemas, OpenAPI, page, access, idempotency, metrics, server."""
