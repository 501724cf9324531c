"""RTP: packets, G.711, the media relay and the WAV recorder."""
