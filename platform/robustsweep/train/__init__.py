"""Training: the framework-free loop and its Ray Train wiring."""
