"""Check stage: judge a deployment's outputs (tolerances, int8 budgets, C++ bitwise, snapshot drift)."""
