"""Local fake servers that speak real services' wire formats, for the real SDKs to talk to."""
