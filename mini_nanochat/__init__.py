"""mini-nanochat: a from-scratch, learning-focused LLM pipeline in the spirit of nanochat."""
__version__ = "0.1.0"
