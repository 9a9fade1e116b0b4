"""HTTP routes of the chat service, one module per API surface."""
