"""alignscope: align language models from preference data and measure the pitfalls that make alignment fail."""

__version__ = "0.1.0"
