"""The content-addressed feature store and the few-shot cache models (arrays in, arrays out)."""
