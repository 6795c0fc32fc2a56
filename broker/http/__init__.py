"""The HTTP boundary: API blueprints, web pages, error mapping, rate limiting, the server."""
