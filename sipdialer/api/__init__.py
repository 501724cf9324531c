"""The HTTP edge: the aiohttp app, its handlers (calls, recordings, extensions, health,
metrics), input reading, byte ranges and the OpenAPI document."""
