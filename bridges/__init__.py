"""Evidence → language: the text bridge and learnable bridges into a language model."""
