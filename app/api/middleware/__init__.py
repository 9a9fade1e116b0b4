"""Pure ASGI middleware: body cap, browser security headers, per-request metrics and logs."""
