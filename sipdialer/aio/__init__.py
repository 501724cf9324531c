"""asyncio drivers of the pure SIP machines: UDP/TCP transports, the user agent, and the
runtimes of the trunk registration and of the registrar for extensions."""
