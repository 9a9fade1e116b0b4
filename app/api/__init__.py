"""The HTTP layer: routes, request/response schemas, the one error shape, middleware and the web console."""
