"""Music: audio diffusion models, controls and the tones zoo."""
