"""The service in-process or as ``sipdialer serve``, with simulated peers."""
