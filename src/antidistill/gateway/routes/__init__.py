"""One router per resource: the OpenAI-compatible API, the admin API, and the service routes."""
