"""The user's Flax module as training sees it: NNX graphs and state, the Linen bridge."""
