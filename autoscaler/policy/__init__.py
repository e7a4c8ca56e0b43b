"""Pure decision code: what the controller runs and the simulator evaluates (one brain, two bodies)."""
