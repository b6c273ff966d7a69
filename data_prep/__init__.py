"""Data preparation scripts: corpora to the formats fairseq and SimulEval read."""
