"""emovec: find, measure and test emotion vectors inside open-weight language models."""

__version__ = "0.1.0"
