"""The HTTP server: ``python -m pyllama.server`` (llama-server's flags and endpoints, over aiohttp)."""
from .app import create_app, wait_ready
from .config import ConfigError, ServerConfig, parse_args

__all__ = ["create_app", "wait_ready", "ServerConfig", "ConfigError", "parse_args"]
