"""What a run leaves for people: reproducer folders and the terminal summary."""
