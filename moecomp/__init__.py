"""moecomp: compress Mixture-of-Experts language models, as a library, a CLI and a service."""

__version__ = "0.1.0"
