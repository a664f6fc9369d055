"""Chat front ends: the conversation session and the terminal chat."""
