"""SimulEval agents."""
