"""Options, ini values and marker arguments → frozen settings objects (plain Python, no pytest)."""
