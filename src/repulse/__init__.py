"""repulse: align language models and measure and reduce the probability of their rare harmful outputs."""

__version__ = "0.1.0"
