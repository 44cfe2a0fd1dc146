"""ferromem: fast, safe, embedded vector memory for AI agents."""
__version__ = "0.1.0"
