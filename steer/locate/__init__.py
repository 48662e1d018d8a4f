"""Locate: find refusal directions and choose one, without decoding. settings (the plain pipeline's
Settings), directions (difference in means per layer and position, [n_layers, n_positions, d_model];
DirectionSet and its files), scores (refusal score, first-token KL, refusal tokens), select (candidates
scored by the criteria of Arditi et al.), run (the stage end to end: activations, candidates, selection)."""
