"""Training: the train state, the jitted steps, how many run per dispatch, the trainer that
owns the live state, and the fit / evaluate / predict loops."""
