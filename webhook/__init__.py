"""The mutating admission webhook: defaults and validates InferenceServices, gates revision pods."""
