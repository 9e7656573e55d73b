"""Training and evaluation: builders turn the config into objects, the loop runs them."""
